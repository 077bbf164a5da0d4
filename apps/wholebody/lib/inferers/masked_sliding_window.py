"""MONAI's averaging sliding window that does not run windows holding no mask voxel (``spleen`` with ``skip_air``).

MONAI divides the weighted sum of window logits by the weighted count of windows. A window not run gives zero
logits and still counts: at a voxel that a skipped window covers, the blended logits shrink by a positive factor
(the argmax is kept, the softmax flattens), and a voxel that only skipped windows cover gets all-zero logits, a
uniform softmax and argmax 0 (background). A voxel of the mask lies in no skipped window, so its output is
exactly that of the unmasked inferer.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from monai.utils import fall_back_tuple

from lib.inferers.streaming_argmax import roi_padding


class MaskedSlidingWindowInferer(SlidingWindowInferer):
    """``SlidingWindowInferer`` plus ``window_mask`` (``(N, 1, *spatial)`` bool, or None), ``out_channels`` (the
    network's, for the zeros of skipped windows) and ``windows``, the counts of windows ``run`` and ``skipped``
    by the last call (as :class:`StreamingArgmaxInferer`)."""

    def __init__(self, *args: Any, out_channels: int, window_mask: torch.Tensor | None = None, **kwargs: Any):
        super().__init__(*args, with_coord=True, **kwargs)  # windows are run by _MaskedWindows, which needs where
        self.out_channels = out_channels
        self.window_mask = window_mask
        self.windows = {"run": 0, "skipped": 0}

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        self.windows = {"run": 0, "skipped": 0}
        window_mask = self.window_mask
        if window_mask is None:  # every window runs, counted as with a mask
            window_mask = torch.ones((inputs.shape[0], 1, *inputs.shape[2:]), dtype=torch.bool)
        roi = fall_back_tuple(self.roi_size, inputs.shape[2:])
        pad = roi_padding(inputs.shape[2:], roi)  # MONAI's windows index the padded image; padding holds no body
        mask = F.pad(window_mask.to(torch.uint8), pad).to(torch.bool) if any(pad) else window_mask.to(torch.bool)
        return super().__call__(inputs, _MaskedWindows(network, mask, self.out_channels, self.windows), *args, **kwargs)


class _MaskedWindows:
    """The network for ``with_coord`` windows: runs only those holding a mask voxel, zero logits for the others."""

    def __init__(self, network: Callable[..., torch.Tensor], mask: torch.Tensor, channels: int, windows: dict[str, int]):
        self.network, self.mask, self.channels, self.windows = network, mask, channels, windows

    def __call__(self, x: torch.Tensor, coords: Sequence[Sequence[slice]], *args: Any, **kwargs: Any) -> torch.Tensor:
        keep = [bool(self.mask[tuple(c)].any()) for c in coords]
        self.windows["run"] += sum(keep)
        self.windows["skipped"] += len(keep) - sum(keep)
        if all(keep):
            return self.network(x, *args, **kwargs)
        out = torch.zeros((len(keep), self.channels, *x.shape[2:]), dtype=x.dtype, device=x.device)
        if any(keep):
            out[torch.tensor(keep)] = self.network(x[torch.tensor(keep)], *args, **kwargs).to(x.dtype)
        return out


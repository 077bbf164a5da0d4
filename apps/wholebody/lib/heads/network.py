"""New structures as extra decoder heads on the frozen encoder of the 104-class SegResNet (clNet's scheme).

A head is a second SegResNet decoder (up-samplings, up-blocks, final conv) that reads the same encoder
features as the base decoder. The base network is never modified, so its 105 logits are computed by the
same operations on the same inputs as without heads: bit-identical.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import torch
from monai.networks.nets import SegResNet

ENCODER_PREFIXES = ("convInit.", "down_layers.")
DECODER_PREFIXES = ("up_samples.", "up_layers.", "conv_final.")


def encoder_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """Hash of the encoder weights a head was trained on: a head only fits those features."""
    digest = hashlib.sha256()
    for key, value in sorted(state_dict.items()):
        if key.startswith(ENCODER_PREFIXES):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class StructureHead(torch.nn.Module):
    """The decoder of a SegResNet with ``1 + len(structures)`` outputs (background first)."""

    def __init__(self, network_factory: Callable[[], SegResNet], n_structures: int):
        super().__init__()
        template = network_factory()
        self.up_samples = template.up_samples
        self.up_layers = template.up_layers
        self.conv_final = template._make_final_conv(1 + n_structures)
        self.n_outputs = 1 + n_structures

    @classmethod
    def from_base(cls, network_factory: Callable[[], SegResNet], base: SegResNet, n_structures: int) -> "StructureHead":
        """Starts from the base decoder's weights (features that already separate organs), new final conv."""
        head = cls(network_factory, n_structures)
        decoder = {k: v for k, v in base.state_dict().items() if k.startswith(DECODER_PREFIXES) and not k.startswith("conv_final.2.")}
        head.load_state_dict(decoder, strict=False)
        return head

    def forward(self, x: torch.Tensor, down_x: Sequence[torch.Tensor]) -> torch.Tensor:
        # SegResNet.decode, reading the base encoder's skip connections (down_x reversed, deepest first).
        for i, (up, upl) in enumerate(zip(self.up_samples, self.up_layers)):
            x = upl(up(x) + down_x[i + 1])
        return self.conv_final(x)


def _encode(base: SegResNet, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x, down_x = base.encode(x)
    down_x.reverse()
    return x, down_x


class HeadedSegResNet(torch.nn.Module):
    """Inference: ``(n, 105 + sum(head outputs), *roi)`` logits, the base's 105 first, then each head's."""

    def __init__(self, base: SegResNet, heads: Sequence[StructureHead]):
        super().__init__()
        self.base = base
        self.heads = torch.nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, down_x = _encode(self.base, x)
        outputs = [self.base.decode(x, down_x)]
        outputs += [head(x, down_x) for head in self.heads]
        return torch.cat(outputs, dim=1)


class HeadTrainingNetwork(torch.nn.Module):
    """Training: the base is frozen and stays in eval mode (no dropout, no norm statistics change),
    so the head learns on exactly the features inference gives it. Only ``head`` has gradients."""

    def __init__(self, base: SegResNet, head: StructureHead):
        super().__init__()
        self.base = base.eval().requires_grad_(False)
        self.head = head

    def train(self, mode: bool = True):
        super().train(mode)
        self.base.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x, down_x = _encode(self.base, x)
        return self.head(x, down_x)

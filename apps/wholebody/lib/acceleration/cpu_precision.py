"""bfloat16 convolutions on CPUs with bfloat16 matrix units (``--conf cpu_precision bf16``).

Intel's AMX (``amx_bf16``, Sapphire Rapids on) and AVX-512 BF16 (``avx512_bf16``, Cooper Lake on, AMD Zen 4
on) multiply bfloat16 at several times the float32 rate; oneDNN uses them when a convolution runs under
``torch.autocast("cpu", dtype=torch.bfloat16)``. Measured on one machine, one 96^3 window of the wholebody
SegResNet: 2.10 s channels-last fp32, 0.62 s channels-last bf16 (issue 22). bfloat16 keeps 8 bits of mantissa,
so near-tied logits may flip: whether labels of a trained model agree is measured, not assumed
(docs/performance.md). Without the units, bfloat16 would be emulated and slower: such a CPU serves fp32.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

import torch

from lib.conf import Conf, ConfError

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
DEFAULT = "fp32"  # --conf cpu_precision's default where a model's agreement was not measured (docs/performance.md)
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = "/proc/cpuinfo"


@functools.cache
def bf16_units() -> bool:
    """Whether this CPU has bfloat16 matrix units that PyTorch's oneDNN can use (read once)."""
    try:
        with open(CPUINFO) as f:
            flags = {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:  # not Linux: no way to tell, so no bfloat16
        return False
    return any(flag in flags for flag in BF16_FLAGS) and torch.backends.mkldnn.is_available()


def serving(precision: str) -> str:
    """The precision that serves a request for ``precision`` on this CPU: bf16 only with the units."""
    if precision == "bf16" and not bf16_units():
        _warn_no_units()
        return "fp32"
    return precision


@functools.cache
def _warn_no_units() -> None:
    logger.warning(f"bf16 requested but this CPU has none of {', '.join(BF16_FLAGS)} (or no oneDNN): serving fp32")


def check(value: Any, name: str) -> str:
    """A precision from ``--conf`` or a request, or ConfError (422 for a request)."""
    precision = str(value).strip().lower()
    if precision not in PRECISIONS:
        raise ConfError(f"'{name}' must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return precision


def choices(default: str) -> list[str]:
    """A task's ``precision`` option: a list shows as a choice in Slicer, its first entry the default; the other
    precision is offered only where this CPU can serve it."""
    return [default, *[p for p in PRECISIONS if p != default and bf16_units()]]


def requested(data: dict[str, Any], default: Any) -> str:
    """The precision serving a request on the CPU: its ``precision`` param (Slicer's list or a value), else the
    task's ``default``; ConfError (422) for anything but fp32 or bf16."""
    value = data.get("precision", default)
    chosen = value[0] if isinstance(value, (list, tuple)) and value else value
    return serving(check(chosen, "precision"))


def precision_from_conf(conf: Conf, default: str = DEFAULT) -> str:
    """``--conf cpu_precision fp32|bf16``: the precision CPU inference serves by default, after the CPU check;
    ``default``: the model's own where the conf names none."""
    return serving(check(conf.raw("cpu_precision") or default, "cpu_precision"))


class BFloat16Autocast(torch.nn.Module):
    """Runs ``network`` under CPU autocast to bfloat16 and returns float32, as the fp32 network would.

    The output layers (the convolution that gives the logits: the last one of each SegResNet decoder, the base's
    and each decoder head's, or else the network's last) run in float32 on their bfloat16 input: bfloat16 logits keep 8 bits of mantissa (steps of 1/16 between 8 and 16), so
    near-tied logits became exact ties and flipped labels. It costs ~3 % of a window (a 1x1x1 convolution in
    the SegResNet); on the confident checkpoint it raised the lowest structure's Dice against fp32 from 0.987
    to 0.993 on the shared CT at 3 mm (docs/performance.md)."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network
        _output_layer_in_float32(network)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.network(x)
        return out.float()


_float32_layers = threading.local()  # per thread, as autocast's own state: the contexts the hooks opened


def _convolutions(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]


def _output_layers(network: torch.nn.Module) -> list[torch.nn.Module]:
    """The last convolution of each ``conv_final`` (SegResNet's and each decoder head's: with heads, the base's
    logits stay those it gives alone), else the network's last convolution (the UNet's, run last)."""
    finals = [m.conv_final for m in network.modules() if isinstance(getattr(m, "conv_final", None), torch.nn.Module)]
    return [_convolutions(final)[-1] for final in finals] if finals else _convolutions(network)[-1:]


def _output_layer_in_float32(network: torch.nn.Module) -> None:
    """Hooks on the output layers that run them without autocast whenever autocast is on in the calling thread.
    Hooks, not swapped modules: the network is shared with fp32 requests (the hooks do nothing there) and its
    state dict keeps its keys."""
    for output in _output_layers(network):
        if getattr(output, "_runs_in_float32", False):
            continue
        output.register_forward_pre_hook(_enter_float32)
        output.register_forward_hook(_leave_float32, always_call=True)
        output._runs_in_float32 = True


def _enter_float32(module: torch.nn.Module, args: tuple) -> tuple | None:
    stack = _float32_layers.__dict__.setdefault("stack", [])
    if not torch.is_autocast_enabled("cpu"):
        stack.append(None)
        return None
    context = torch.autocast("cpu", enabled=False)
    context.__enter__()
    stack.append(context)
    return tuple(a.float() if torch.is_tensor(a) else a for a in args)


def _leave_float32(module: torch.nn.Module, args: tuple, output: Any) -> None:
    context = _float32_layers.stack.pop()
    if context is not None:
        context.__exit__(None, None, None)


def autocast(device: str | torch.device, precision: str) -> torch.autocast:
    """The autocast a block of inference runs under: bfloat16 on a CPU in bf16, else AMP on a GPU, else none."""
    kind = torch.device(device).type
    if kind == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    return torch.autocast(kind, enabled=kind == "cuda")


def for_device(network: torch.nn.Module, device: str | torch.device, precision: str) -> torch.nn.Module:
    """``network`` in ``precision`` on ``device``: bf16 autocast only on a CPU (a GPU runs its own AMP)."""
    if precision == "bf16" and torch.device(device).type == "cpu":
        return BFloat16Autocast(network)
    return network

"""Channels-last (NDHWC) 3D convolutions on the CPU.

oneDNN's 3D convolutions run ~1.2x faster on NDHWC than on PyTorch's default NCDHW layout, which
they reorder on every call (measured on this project's 2-core machine: a 96^3 window of the
wholebody SegResNet 3.2 s vs 3.9 s). Only the summation order changes: argmax labels agree on
99.99 % of voxels with random weights, where near-ties are everywhere.
"""

from __future__ import annotations

import torch


class ChannelsLast(torch.nn.Module):
    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network.to(memory_format=torch.channels_last_3d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.contiguous(memory_format=torch.channels_last_3d))


def for_device(network: torch.nn.Module, device: str | torch.device, enabled: bool) -> torch.nn.Module:
    """``network`` in the fastest layout for ``device``: channels-last on the CPU when enabled."""
    return ChannelsLast(network) if enabled and torch.device(device).type == "cpu" else network

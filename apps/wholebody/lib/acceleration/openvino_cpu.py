"""CPU inference of the CT segmentation networks through OpenVINO's CPU plugin (``--conf cpu_engine openvino``).

OpenVINO fuses each convolution with its normalisation and activation and picks its own kernels (AMX for
bfloat16 where the CPU has it); on this network it beat PyTorch's own oneDNN path in both precisions
(docs/performance.md#bfloat16-and-air-windows-on-the-cpu). The PyTorch network stays the source of truth: it is
converted once per loaded checkpoint, traced on a small input with free spatial sizes (~7 s, ~1 GB here;
tracing a whole 96^3 window took 43 s and 6.6 GB), then compiled per window shape and precision (~0.5 s) and
kept with the network. Logits come back as float32 tensors, as PyTorch's would.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref

import torch

logger = logging.getLogger(__name__)

TRACE_SIZE = (32, 32, 32)  # any size the network's down- and up-sampling divides: the shapes stay free
HINTS = {"fp32": "f32", "bf16": "bf16"}


@functools.cache
def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVINONetwork:
    """One PyTorch network converted to OpenVINO, compiled per (input shape, precision, threads) on first use."""

    def __init__(self, network: torch.nn.Module):
        import openvino as ov

        self._ov = ov
        self._core = ov.Core()
        channels = next(p for p in network.parameters() if p.dim() == 5).shape[1]  # the first convolution's inputs
        with torch.no_grad():
            self._model = ov.convert_model(
                network.eval(), example_input=torch.zeros(1, channels, *TRACE_SIZE), input=[ov.PartialShape([1, channels, -1, -1, -1])]
            )
        self._compiled: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def compiled(self, shape: tuple[int, ...], precision: str):
        # Threads as PyTorch's: the server splits the cores among its inference workers (lib/server).
        key = (shape, precision, torch.get_num_threads())
        with self._lock:
            if key not in self._compiled:
                model = self._model.clone()
                model.reshape({0: self._ov.PartialShape(list(shape))})
                config = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": key[2]}
                self._compiled[key] = self._core.compile_model(model, "CPU", config)
            return self._compiled[key]

    def __call__(self, x: torch.Tensor, precision: str) -> torch.Tensor:
        request = self.compiled(tuple(x.shape), precision).create_infer_request()  # one per call: thread-safe
        request.infer({0: x.detach().to("cpu", torch.float32).contiguous().numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())


class OpenVINOInference(torch.nn.Module):
    """``OpenVINONetwork`` in one precision, called as the PyTorch network is (by the sliding-window inferers)."""

    def __init__(self, engine: OpenVINONetwork, precision: str):
        super().__init__()
        self.engine, self.precision = engine, precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.engine(x, self.precision)


_engines: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # network -> its conversion, gone with it
_engines_lock = threading.Lock()


def for_network(network: torch.nn.Module, precision: str) -> OpenVINOInference:
    """The conversion of ``network`` (made once, while it lives), in ``precision``."""
    with _engines_lock:
        engine = _engines.get(network)
        if engine is None:
            engine = _engines[network] = OpenVINONetwork(network)
            logger.info(f"{type(network).__name__} converted to OpenVINO {engine._ov.__version__}")
    return OpenVINOInference(engine, precision)

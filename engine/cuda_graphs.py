"""The U-Net replayed from captured CUDA graphs: one launch per forward instead of hundreds.

On a GPU the embedded prior's U-Net is too small to keep the device busy: a CFG forward launches
some 600 kernels, and the CPU launching them is the whole cost. Score distillation calls it with
the same shapes every step, so its forward can be captured once per shape and replayed. Inputs
are copied into the captured graph's own buffers; the output is copied out, because the next
replay overwrites it.

``GraphedUNet`` keeps the U-Net's call signature (``unet(sample, timestep, encoder_hidden_states)
.sample``), so the prior uses it like the plain U-Net. The capture itself is a swappable
``Capture``: ``CudaGraphCapture`` on a GPU; tests use one that replays by calling the function.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

log = logging.getLogger(__name__)

# Forwards run before capture: cuDNN and cuBLAS pick their kernels and allocate workspaces then,
# which must not happen inside the capture.
WARMUP_FORWARDS = 3


class Capture(Protocol):
    def __call__(self, function: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        """Record ``function`` (which reads fixed input buffers); return (replay, its output buffer)."""


def cuda_graph_capture(function: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
    """Capture ``function`` into a ``torch.cuda.CUDAGraph`` after warm-up forwards on a side stream."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_FORWARDS):
            function()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = function()
    return graph.replay, output


@dataclass
class _Captured:
    sample: torch.Tensor
    timestep: torch.Tensor
    text: torch.Tensor
    replay: Callable[[], None]
    output: torch.Tensor


@dataclass
class UNetOutput:
    sample: torch.Tensor


class GraphedUNet(torch.nn.Module):
    """``unet`` whose forward is captured once per input shape and replayed after.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (frozen, in eval mode, on its device).
        capture: how a forward is recorded; ``cuda_graph_capture`` by default.
    """

    def __init__(self, unet: torch.nn.Module, capture: Capture = cuda_graph_capture):
        super().__init__()
        self.unet = unet
        self.config = unet.config  # the prior reads the U-Net's config
        self.capture = capture
        self.captured: dict[tuple, _Captured] = {}
        self._lock = threading.Lock()  # one graph's buffers serve every thread that calls it

    @torch.no_grad()
    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> UNetOutput:
        timestep = timestep.to(sample.device).expand(sample.shape[0])
        key = (tuple(sample.shape), sample.dtype, tuple(encoder_hidden_states.shape), timestep.dtype)
        with self._lock:
            entry = self.captured.get(key) or self._capture(key, sample, timestep, encoder_hidden_states)
            entry.sample.copy_(sample)
            entry.timestep.copy_(timestep)
            entry.text.copy_(encoder_hidden_states)
            entry.replay()
            return UNetOutput(entry.output.clone())

    def _capture(self, key: tuple, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> _Captured:
        inputs = sample.clone(), timestep.clone(), text.clone()
        replay, output = self.capture(lambda: self.unet(*inputs[:2], encoder_hidden_states=inputs[2]).sample)
        log.info("captured the U-Net's forward for input %s", key[0])
        self.captured[key] = _Captured(*inputs, replay, output)
        return self.captured[key]

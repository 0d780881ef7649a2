"""The TensorRT member of the runner family (:mod:`model_registry.runners`): serving, the canary, the gates and the
benchmarks all run a TensorRT engine through it.

Per concurrent caller (thread): its own execution context and CUDA stream. Per input shape: pinned host
buffers and device buffers bound once (``set_input_shape``, ``set_tensor_address``), and, when enabled, a CUDA
graph captured around ``execute_async_v3``. A request copies its input into the pinned buffer, replays (or
enqueues) on its stream, copies the output back and synchronizes that stream only. Buffers follow the dtypes
the engine declares (an FP16-output engine writes halves). Needs TensorRT and a CUDA build of torch (the GPU
worker image; a GPU serving host installs both beside ``model-factory[serve]``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .runners import Runner, Tensor


def cuda_latencies(torch: Any, step: Callable[[Any], None], warmup: int, iters: int, max_seconds: float,
                   stream: Any = None) -> list[int]:
    """Time ``step(stream)`` with CUDA events on ``stream`` (default: a new one), one request at a time (ns)."""
    stream = stream or torch.cuda.Stream()
    for _ in range(warmup):
        step(stream)
    stream.synchronize()
    samples, spent = [], 0.0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(iters):
        start.record(stream)
        step(stream)
        end.record(stream)
        end.synchronize()
        ms = start.elapsed_time(end)
        samples.append(int(ms * 1e6))
        spent += ms / 1e3
        if spent >= max_seconds and len(samples) >= 20:
            break
    return samples


class _Bound:
    """One input shape's buffers on one context, and its CUDA graph when captured."""

    def __init__(self, host_in: Any, dev_in: Any, dev_out: Any, host_out: Any):
        self.host_in, self.dev_in, self.dev_out, self.host_out = host_in, dev_in, dev_out, host_out
        self.graph: Any = None


class _Slot:
    """One caller's execution context and stream, with its bound shapes."""

    def __init__(self, context: Any, stream: Any):
        self.context, self.stream = context, stream
        self.shapes: dict[tuple[int, ...], _Bound] = {}
        self.current: tuple[int, ...] | None = None


class TensorRTRunner(Runner):
    """A deserialized TensorRT engine served from any number of threads.

    ``activate()`` deserializes the plan; the input is the engine's (first) input tensor and ``output`` defaults to
    its first output tensor, both read from the engine. ``infer_named`` returns that one output (the families'
    engines have one).
    """

    backend = "tensorrt"
    device = "cuda"

    def __init__(self, plan: Path, cuda_graph: bool = False, output: str | None = None):
        self.plan, self.cuda_graph, self._output = Path(plan), cuda_graph, output
        self.name = f"tensorrt:{self.plan.name}"
        self._local = threading.local()

    def _activate(self) -> None:
        import tensorrt as trt
        import torch

        self.torch, self.trt = torch, trt
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:  # TensorRT's guidance: require a non-null engine before taking traffic
            raise RuntimeError(f"TensorRT could not deserialize {self.plan} (built for another GPU or TensorRT "
                               f"version?)")
        names = self._names()
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = self._output or next(n for n in names
                                           if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.info = {"backend": "tensorrt", "tensorrt": trt.__version__, "cuda_graph": self.cuda_graph,
                     "device": torch.cuda.get_device_name()}
        self._local = threading.local()

    def _deactivate(self) -> None:
        self._local = threading.local()
        del self.engine

    def _names(self) -> list[str]:
        return [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]

    def _tensors(self, mode: Any) -> list[Tensor]:
        return [Tensor(n, self.dtype(n), tuple(self.engine.get_tensor_shape(n))) for n in self._names()
                if self.engine.get_tensor_mode(n) == mode]

    def inputs(self) -> list[Tensor]:
        return self._tensors(self.trt.TensorIOMode.INPUT)

    def outputs(self) -> list[Tensor]:
        return self._tensors(self.trt.TensorIOMode.OUTPUT)

    def infer_named(self, feed: Any) -> dict[str, np.ndarray]:
        return {self.output: self.infer(np.ascontiguousarray(feed[self.input]))}

    # -- declared tensors --------------------------------------------------------------------------------
    def dtype(self, name: str) -> np.dtype:
        """The numpy dtype the engine declares for tensor ``name``."""
        return np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))

    def output_buffer_dtype(self) -> Any:
        """The torch dtype of the output buffers: the engine's declared one, never an assumed float32."""
        return self.torch.from_numpy(np.empty(0, dtype=self.dtype(self.output))).dtype

    def profile_limits(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(min, max) input shape of the engine's optimization profile 0."""
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input, 0)
        return tuple(lo), tuple(hi)

    def check_shape(self, shape: tuple[int, ...]) -> None:
        lo, hi = self.profile_limits()
        if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            raise ValueError(f"input shape {shape} is outside the engine's profile [{lo}, {hi}]")

    # -- per caller, per shape ---------------------------------------------------------------------------
    def _new_stream(self) -> Any:
        return self.torch.cuda.Stream()

    def _slot(self) -> _Slot:
        slot = getattr(self._local, "slot", None)
        if slot is None:  # one execution context per concurrent stream
            slot = self._local.slot = _Slot(self.engine.create_execution_context(), self._new_stream())
        return slot

    def _bind(self, slot: _Slot, shape: tuple[int, ...]) -> _Bound:
        torch, ctx = self.torch, slot.context
        b = slot.shapes.get(shape)
        if b is None:
            self.check_shape(shape)
            in_dtype = torch.from_numpy(np.empty(0, dtype=self.dtype(self.input))).dtype
            pinned = self.device == "cuda"
            ctx.set_input_shape(self.input, shape)
            out_shape = tuple(ctx.get_tensor_shape(self.output))
            out_dtype = self.output_buffer_dtype()
            b = _Bound(torch.empty(shape, dtype=in_dtype, pin_memory=pinned),
                       torch.empty(shape, dtype=in_dtype, device=self.device),
                       torch.empty(out_shape, dtype=out_dtype, device=self.device),
                       torch.empty(out_shape, dtype=out_dtype, pin_memory=pinned))
            slot.shapes[shape] = b
        if slot.current != shape:  # the context's shape and addresses follow the request's shape
            ctx.set_input_shape(self.input, shape)
            ctx.set_tensor_address(self.input, b.dev_in.data_ptr())
            ctx.set_tensor_address(self.output, b.dev_out.data_ptr())
            slot.current = shape
        if self.cuda_graph and b.graph is None:
            b.graph = self._capture(slot)
        return b

    def _capture(self, slot: _Slot) -> Any:
        torch = self.torch
        slot.context.execute_async_v3(slot.stream.cuda_stream)  # the first enqueue after a shape change
        slot.stream.synchronize()                                # is not capturable
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=slot.stream):
            slot.context.execute_async_v3(slot.stream.cuda_stream)
        return graph

    def _on(self, stream: Any) -> Any:
        return self.torch.cuda.stream(stream)

    def _enqueue(self, slot: _Slot, b: _Bound) -> None:
        with self._on(slot.stream):
            b.dev_in.copy_(b.host_in, non_blocking=True)
            if b.graph is not None:
                b.graph.replay()
            elif not slot.context.execute_async_v3(slot.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            b.host_out.copy_(b.dev_out, non_blocking=True)

    def infer(self, x: np.ndarray) -> np.ndarray:
        slot = self._slot()
        b = self._bind(slot, tuple(x.shape))
        b.host_in.numpy()[...] = x  # into the pinned buffer, in the engine's input dtype
        self._enqueue(slot, b)
        slot.stream.synchronize()
        return b.host_out.numpy().astype(np.float32)  # read in the declared dtype, widened (a copy) for the caller

    def latencies(self, x: np.ndarray, warmup: int, iters: int, max_seconds: float) -> list[int]:
        slot = self._slot()
        b = self._bind(slot, tuple(x.shape))
        b.host_in.numpy()[...] = x
        return cuda_latencies(self.torch, lambda stream: self._enqueue(slot, b), warmup, iters, max_seconds,
                              stream=slot.stream)

"""The one engine-runner contract, for serving, the canary (recording and checking), the gates and the benchmarks.

Modelled on Polygraphy's ``BaseRunner``: a runner is built cheaply, ``activate()`` loads the engine (an ONNX Runtime
session, a deserialized TensorRT plan), and the input and output names, dtypes and shapes are then read from the
session or engine, never assumed. ``infer(x)`` feeds one array to the engine's first input and returns its first
output (the families' models have one of each: the serving hot path); ``infer_named(feed)`` feeds by name and
returns every output by name. ``latencies`` times calls for the benchmark harness. ``deactivate()`` (``close()``)
frees the engine.

Members: :class:`OnnxRuntimeRunner` (this module: the project's only ``InferenceSession``) and
:class:`model_registry.trt.TensorRTRunner` (pinned buffers, CUDA graphs). Build one with :func:`open_runner`, or
:func:`open_engine` for an installed version (options from its manifest). :func:`as_polygraphy` hands a runner to
Polygraphy's ``Comparator`` without a second session.

Why an own base class rather than subclassing Polygraphy's: serving calls ``infer`` from many threads at once on a
runner that stays active while an old version drains after a swap; Polygraphy's ``BaseRunner`` keeps per-call state
(``inference_time``), re-checks the feed on every call, and warns from ``__del__`` about a runner dropped while
active. The adapter is the one place that speaks Polygraphy's interface.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}

_ORT_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}
"""``graph_optimization_level`` as the ONNX Runtime builder records it in the manifest."""


@dataclass(frozen=True)
class Tensor:
    """One input or output as the session or engine declares it (a dynamic dim is a name or None)."""

    name: str
    dtype: np.dtype
    shape: tuple[Any, ...]


def time_calls(fn: Callable[[], object], warmup: int, iters: int, max_seconds: float,
               clock: Callable[[], int] = time.perf_counter_ns) -> list[int]:
    """Call ``fn`` ``warmup`` times, then time up to ``iters`` calls (fewer once ``max_seconds`` is spent)."""
    for _ in range(warmup):
        fn()
    samples: list[int] = []
    budget = int(max_seconds * 1e9)
    spent = 0
    for _ in range(iters):
        t0 = clock()
        fn()
        dt = clock() - t0
        samples.append(dt)
        spent += dt
        if spent >= budget and len(samples) >= 20:
            break
    return samples


def infer_batched(runner: Any, x: np.ndarray, batch: int) -> np.ndarray:
    """``runner.infer`` over ``x`` in chunks of ``batch`` rows (the profile's max batch: a sample of any size fits)."""
    return np.concatenate([runner.infer(np.ascontiguousarray(x[i:i + batch])) for i in range(0, len(x), batch)])


class Runner:
    """The contract every engine backend meets. Subclasses implement ``_activate``, ``_deactivate``, ``inputs``,
    ``outputs``, ``infer`` and ``infer_named``; ``latencies`` defaults to wall-clock timing of ``infer``."""

    backend = ""
    name = "runner"
    info: dict[str, Any]
    """What the numbers depend on: threads, provider, device, CUDA graphs…"""
    is_active = False

    def activate(self) -> Self:
        """Load the engine (idempotent); returns the runner, so ``open_runner(...).activate()`` reads well."""
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    close = deactivate

    def __enter__(self) -> Self:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    def inputs(self) -> list[Tensor]:
        """The engine's inputs, in order, as it declares them."""
        raise NotImplementedError

    def outputs(self) -> list[Tensor]:
        """The engine's outputs, in order, as it declares them."""
        raise NotImplementedError

    def infer(self, x: np.ndarray) -> np.ndarray:
        """``x`` into the first input; the first output (or the one named at construction)."""
        raise NotImplementedError

    def infer_named(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output by name, for a feed by input name."""
        raise NotImplementedError

    def latencies(self, x: np.ndarray, warmup: int, iters: int, max_seconds: float) -> list[int]:
        """Nanoseconds per ``infer(x)``, one request at a time."""
        return time_calls(lambda: self.infer(x), warmup, iters, max_seconds)


def ort_session_options(opt_level: str | None = None, threads: int = 1, optimized_path: str | None = None) -> Any:
    """ONNX Runtime session options: fixed intra-op threads, one inter-op thread, sequential execution;
    ``opt_level`` (``disabled``/``basic``/``extended``/``all``; None: ONNX Runtime's default)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if opt_level is not None:
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _ORT_LEVELS[opt_level])
    so.intra_op_num_threads, so.inter_op_num_threads = int(threads), 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if optimized_path:
        so.optimized_model_filepath = str(optimized_path)
    return so


class OnnxRuntimeRunner(Runner):
    """An ONNX Runtime CPU session with a fixed thread count (the ``cpu`` target's engine, or any ONNX graph).

    ``threads=0`` lets ONNX Runtime pick. ``save_optimized``: also write the optimized graph there at activation
    (the ONNX Runtime engine builder). ``output``: the output ``infer`` returns (default: the session's first).
    """

    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int = 1, opt_level: str | None = None, output: str | None = None,
                 save_optimized: Path | None = None):
        self.path, self.threads, self.opt_level = Path(path), int(threads), opt_level
        self._output, self.save_optimized = output, save_optimized
        self.name = f"onnxruntime:{self.path.name}"
        self.info = {"backend": "onnxruntime", "threads": self.threads, "provider": "CPUExecutionProvider",
                     **({"graph_optimization_level": opt_level} if opt_level else {})}

    def _activate(self) -> None:
        import onnxruntime as ort

        so = ort_session_options(self.opt_level, self.threads, self.save_optimized)
        self.session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self._output or self.session.get_outputs()[0].name
        self._output_names = [o.name for o in self.session.get_outputs()]

    def _deactivate(self) -> None:
        del self.session

    @staticmethod
    def _tensors(nodes: Any) -> list[Tensor]:
        return [Tensor(n.name, np.dtype(_ORT_TYPES.get(n.type, np.float32)), tuple(n.shape)) for n in nodes]

    def inputs(self) -> list[Tensor]:
        return self._tensors(self.session.get_inputs())

    def outputs(self) -> list[Tensor]:
        return self._tensors(self.session.get_outputs())

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input: x})[0]

    def infer_named(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._output_names, self.session.run(None, dict(feed))))


def open_runner(path: Path, backend: str, threads: int = 1, opt_level: str | None = None,
                cuda_graph: bool = False, output: str | None = None) -> Runner:
    """An active runner for the engine file ``path`` of ``backend`` (``onnxruntime`` or ``tensorrt``)."""
    if backend == "onnxruntime":
        return OnnxRuntimeRunner(path, threads=threads, opt_level=opt_level, output=output).activate()
    if backend == "tensorrt":
        from .trt import TensorRTRunner

        return TensorRTRunner(path, cuda_graph=cuda_graph, output=output).activate()
    raise ValueError(f"unknown backend {backend!r} (expected onnxruntime or tensorrt)")


def engine_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The runner options of a built engine, from its manifest's ``build.options``: the same for the build host's
    recording of the canary sample, the serving host's canary and serving, and the gates."""
    level = options.get("graph_optimization_level")
    return {"threads": int(options.get("intra_op_threads", 1)), "opt_level": level if level in _ORT_LEVELS else None}


def open_engine(folder: Path, manifest: Any, cuda_graph: bool = False) -> Runner:
    """An active runner for an installed or built engine folder, with the options its manifest records."""
    return open_runner(Path(folder) / manifest.engine_file, manifest.backend, cuda_graph=cuda_graph,
                       **engine_options(manifest.build.get("options", {})))


def declared_mismatch(runner: Runner, manifest: Any) -> str | None:
    """Where the engine's own tensors differ from its manifest's (names of every input and output, input dtypes:
    what a request is checked against before it reaches the engine), or None."""
    ins, outs = runner.inputs(), runner.outputs()
    for what, got, decl in (("input", [t.name for t in ins], [t.name for t in manifest.inputs]),
                            ("output", [t.name for t in outs], [t.name for t in manifest.outputs])):
        if got != decl:
            return f"the engine's {what} names {got} differ from the manifest's {decl}"
    for t, d in zip(ins, manifest.inputs):
        if t.dtype != np.dtype(d.dtype):
            return f"the engine's input {t.name!r} is {t.dtype}, the manifest declares {d.dtype}"
    return None


def as_polygraphy(runner: Runner) -> Any:
    """``runner`` seen through Polygraphy's ``BaseRunner`` interface, for ``Comparator.run``: the comparator then
    runs the very session or engine the caller built. Activates ``runner`` if needed and deactivates it on exit
    only if it activated it."""
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class _Adapter(BaseRunner):
        def __init__(self, inner: Runner):
            super().__init__(name=inner.name)
            self.inner, self._owned = inner, False

        def activate_impl(self) -> None:
            self._owned = not self.inner.is_active
            self.inner.activate()

        def get_input_metadata_impl(self) -> Any:
            meta = TensorMetadata()
            for t in self.inner.inputs():
                meta.add(t.name, dtype=t.dtype, shape=[d if isinstance(d, int) else None for d in t.shape])
            return meta

        def infer_impl(self, feed_dict: Any) -> Any:
            start = time.perf_counter()
            out = self.inner.infer_named(feed_dict)
            self.inference_time = time.perf_counter() - start
            return out

        def deactivate_impl(self) -> None:
            if self._owned:
                self.inner.deactivate()
            self._owned = False

    return _Adapter(runner)


__all__ = ["OnnxRuntimeRunner", "Runner", "Tensor", "as_polygraphy", "declared_mismatch", "engine_options",
           "infer_batched", "open_engine", "open_runner", "ort_session_options", "time_calls"]

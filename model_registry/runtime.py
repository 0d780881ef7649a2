"""``EngineRunner``: serve an installed engine and hot-swap it without failing a request.

The new engine loads and warms up beside the old one; the switch is one reference
assignment under a lock; a request holds the engine it started on until it returns,
so requests in flight finish on the old engine. Backends: ONNX Runtime (CPU) and
TensorRT through Polygraphy's ``TrtRunner``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from factory_core.contracts import MANIFEST, Manifest


class _OrtEngine:
    def __init__(self, folder: Path, manifest: Manifest):
        import onnxruntime as ort

        so = ort.SessionOptions()
        opts = manifest.build.get("options", {})
        so.intra_op_num_threads = int(opts.get("intra_op_threads", 1))
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(folder / manifest.engine_file), so,
                                            providers=["CPUExecutionProvider"])
        self.input, self.output = manifest.inputs[0].name, manifest.outputs[0].name

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input: x})[0]

    def close(self) -> None:
        pass


class _TrtEngine:
    def __init__(self, folder: Path, manifest: Manifest):
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        self.runner = TrtRunner(EngineFromBytes(BytesFromPath(str(folder / manifest.engine_file))))
        self.runner.activate()
        self.input, self.output = manifest.inputs[0].name, manifest.outputs[0].name
        self.lock = threading.Lock()  # one execution context: serialize

    def infer(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            return self.runner.infer({self.input: x})[self.output].copy()

    def close(self) -> None:
        self.runner.deactivate()


class _Loaded:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.manifest = Manifest.model_validate_json((self.folder / MANIFEST).read_text())
        self.version = self.manifest.version
        backend = self.manifest.backend
        self.engine = _OrtEngine(self.folder, self.manifest) if backend == "onnxruntime" else _TrtEngine(
            self.folder, self.manifest)

    def warm_up(self, rounds: int = 20) -> None:
        prof = self.manifest.inputs[0].profile
        rng = np.random.default_rng(0)
        for shape in (prof["min"], prof["opt"]):
            x = rng.standard_normal(shape).astype(np.float32)
            for _ in range(rounds):
                out = self.engine.infer(x)
            if not np.isfinite(out).all():
                raise RuntimeError(f"{self.folder}: warm-up produced non-finite outputs; not swapping")


class EngineRunner:
    """Serves ``predict`` from the current engine; ``swap`` replaces it with no failed request.

    Optional ``metrics`` (:class:`monitoring.serving.ServingMetrics`) and ``prediction_log``
    (:class:`monitoring.serving.PredictionLog`) observe every request off the critical path.
    """

    def __init__(self, folder: Path, metrics: Any = None, prediction_log: Any = None):
        self._lock = threading.Lock()
        self._current = _Loaded(folder)
        self._current.warm_up()
        self.swaps: list[dict[str, Any]] = []
        self.metrics, self.prediction_log = metrics, prediction_log
        if metrics is not None:
            metrics.set_version(self._current.version)

    @property
    def version(self) -> str:
        return self._current.version

    def predict(self, x: np.ndarray) -> np.ndarray:
        engine = self._current  # the request keeps this engine even if a swap happens meanwhile
        start = time.perf_counter()
        try:
            out = engine.engine.infer(np.ascontiguousarray(x, dtype=np.float32))
        except Exception:
            if self.metrics is not None:
                self.metrics.failed()
            raise
        seconds = time.perf_counter() - start
        if self.metrics is not None:
            self.metrics.observe(seconds)
        if self.prediction_log is not None:
            self.prediction_log.record(x, out, seconds, engine.version)
        return out

    def swap(self, folder: Path) -> float:
        """Load and warm ``folder`` beside the current engine, then switch; returns the swap time in seconds."""
        start = time.perf_counter()
        new = _Loaded(folder)
        new.warm_up()
        with self._lock:
            old, self._current = self._current, new
        if self.metrics is not None:
            self.metrics.set_version(new.version)
        seconds = time.perf_counter() - start
        self.swaps.append({"from": old.version, "to": new.version, "seconds": seconds})
        return seconds

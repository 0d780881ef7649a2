"""``EngineRunner``: serve an installed engine, hot-swap it without failing a request, fall back to the CPU
engine behind a circuit breaker, and keep every failed request for replay.

- **Swap**: the new version passes the preflight canary first (:mod:`model_registry.canary`: sha256 of every
  file, the same input/output contract as the served one, then a child process loads, warms and checks it on
  the recorded sample). Only then is it loaded beside the live engine and switched by one reference
  assignment; requests in flight finish on the engine they started on. A refusal leaves the live engine
  serving and raises :class:`~model_registry.canary.SwapRefused`.
- **Breaker**: ``breaker_failures`` consecutive failures or non-finite outputs of the primary engine open the
  breaker; requests then go to the fallback engine (the CPU champion, kept loaded). After
  ``breaker_cooldown_s`` one request half-opens it: success closes it, failure reopens it. With no fallback a
  failing request raises.
- **Failure capture**: a failed or non-finite request's input, the version and the error go to a bounded
  :class:`FailureStore` (full: dropped and counted); ``factory-serve replay-failure`` re-runs one.

Backends: ONNX Runtime (CPU) and TensorRT (:class:`model_registry.trt.TensorRTRunner`: pinned buffers,
``execute_async_v3`` on its own stream, CUDA graphs per shape, one execution context per stream).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from factory_core.contracts import MANIFEST, Manifest

from .canary import SwapRefused, preflight, read_manifest

log = logging.getLogger(__name__)


class NonFiniteOutput(RuntimeError):
    """The engine returned NaN or inf: never handed to a caller."""


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


def load_engine(folder: Path, manifest: Manifest) -> Any:
    """The engine object (``infer``/``close``) for an installed version, by its backend."""
    if manifest.backend == "onnxruntime":
        return _OrtEngine(Path(folder), manifest)
    if manifest.backend == "tensorrt":
        from .trt import TensorRTRunner

        return TensorRTRunner(Path(folder) / manifest.engine_file, output=manifest.outputs[0].name)
    raise SwapRefused("backend", f"unknown backend {manifest.backend!r}")


class _Loaded:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.version = self.manifest.version
        self.engine = load_engine(self.folder, self.manifest)

    def warm_up(self, rounds: int = 20) -> None:
        prof = self.manifest.inputs[0].profile
        rng = np.random.default_rng(0)
        for shape in (prof["min"], prof["opt"]):
            x = rng.standard_normal(shape).astype(np.float32)
            for _ in range(rounds):
                out = self.engine.infer(x)
            if not np.isfinite(out).all():
                raise SwapRefused("non-finite", f"{self.folder}: warm-up produced non-finite outputs")


class FailureStore:
    """Failed requests on local disk, bounded: ``<id>.npz`` (the input) + ``<id>.json`` (version, error, time)."""

    def __init__(self, root: Path, max_items: int = 1000):
        self.root, self.max_items = Path(root), max_items
        self.root.mkdir(parents=True, exist_ok=True)
        self.dropped = 0
        self._lock = threading.Lock()

    def save(self, x: np.ndarray, version: str, error: str) -> str | None:
        """The saved failure's id, or None when the store is full (the failure is counted in ``dropped``)."""
        with self._lock:
            if len(list(self.root.glob("*.json"))) >= self.max_items:
                self.dropped += 1
                return None
            fid = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
            np.save(self.root / f"{fid}.npy", np.asarray(x))
            tmp = self.root / f".{fid}.json"
            tmp.write_text(json.dumps({"id": fid, "version": version, "error": error,
                                       "at": dt.datetime.now(dt.timezone.utc).isoformat()}))
            tmp.rename(self.root / f"{fid}.json")  # a record is listed only once its input is on disk
            return fid

    def list(self) -> list[dict[str, Any]]:
        return sorted((json.loads(p.read_text()) for p in self.root.glob("*.json")), key=lambda r: r["id"])

    def load(self, fid: str) -> tuple[np.ndarray, dict[str, Any]]:
        meta = self.root / f"{fid}.json"
        if not meta.is_file():
            raise KeyError(f"no failure {fid!r} in {self.root}")
        return np.load(self.root / f"{fid}.npy"), json.loads(meta.read_text())


@dataclass
class _Breaker:
    failures: int
    cooldown_s: float
    state: int = 0  # 0 closed, 1 open, 2 half-open
    consecutive: int = 0
    opened_at: float = 0.0

    def use_primary(self) -> bool:
        if self.state == 1 and time.monotonic() - self.opened_at >= self.cooldown_s:
            self.state = 2  # one request tries the primary again
            return True
        return self.state != 1

    def record(self, ok: bool) -> None:
        if ok:
            self.consecutive, self.state = 0, 0
            return
        self.consecutive += 1
        if self.state == 2 or self.consecutive >= self.failures:
            self.state, self.opened_at = 1, time.monotonic()


class EngineRunner:
    """Serves ``predict`` from the current engine; ``swap`` replaces it after the canary, with no failed request.

    Optional ``metrics`` (:class:`monitoring.serving.ServingMetrics`) and ``prediction_log``
    (:class:`monitoring.serving.PredictionLog`) observe every request off the critical path. ``fallback``: an
    installed CPU engine kept loaded for the breaker. ``failures``: a :class:`FailureStore`.
    """

    def __init__(self, folder: Path, metrics: Any = None, prediction_log: Any = None, fallback: Path | None = None,
                 failures: FailureStore | None = None, breaker_failures: int = 5, breaker_cooldown_s: float = 30.0,
                 canary: bool = True, canary_timeout_s: float = 60.0):
        self._lock = threading.Lock()
        self._current = _Loaded(folder)
        self._current.warm_up()
        self._fallback = None
        if fallback is not None:
            self._fallback = _Loaded(fallback)
            self._fallback.warm_up()
        self.swaps: list[dict[str, Any]] = []
        self.metrics, self.prediction_log, self.failures = metrics, prediction_log, failures
        self.breaker = _Breaker(breaker_failures, breaker_cooldown_s)
        self.canary, self.canary_timeout_s = canary, canary_timeout_s
        if metrics is not None:
            metrics.set_version(self._current.version)
            metrics.set_breaker(0)

    @property
    def version(self) -> str:
        return self._current.version

    @property
    def manifest(self) -> Manifest:
        return self._current.manifest

    def predict(self, x: np.ndarray) -> np.ndarray:
        engine = self._current  # the request keeps this engine even if a swap happens meanwhile
        x = np.ascontiguousarray(x, dtype=np.float32)
        start = time.perf_counter()
        use_primary = self._fallback is None or self._breaker_allows()
        try:
            out = self._run(engine if use_primary else self._fallback, x)
        except Exception as exc:
            self._capture(x, engine.version if use_primary else self._fallback.version, exc)
            if use_primary and self._fallback is not None:
                self._breaker_record(False)
                out = self._run_fallback(x, start)
                return out
            if self.metrics is not None:
                self.metrics.failed()
            raise
        if use_primary and self._fallback is not None:
            self._breaker_record(True)
        elif not use_primary and self.metrics is not None:
            self.metrics.fell_back()
        self._observe(x, out, start, engine.version if use_primary else self._fallback.version)
        return out

    def _run(self, loaded: _Loaded, x: np.ndarray) -> np.ndarray:
        out = loaded.engine.infer(x)
        if not np.isfinite(out).all():
            raise NonFiniteOutput(f"{int((~np.isfinite(out)).sum())} non-finite outputs from {loaded.version}")
        return out

    def _run_fallback(self, x: np.ndarray, start: float) -> np.ndarray:
        try:
            out = self._run(self._fallback, x)
        except Exception as exc:
            self._capture(x, self._fallback.version, exc)
            if self.metrics is not None:
                self.metrics.failed()
            raise
        if self.metrics is not None:
            self.metrics.fell_back()
        self._observe(x, out, start, self._fallback.version)
        return out

    def _breaker_allows(self) -> bool:
        with self._lock:
            before = self.breaker.state
            allowed = self.breaker.use_primary()
            self._breaker_changed(before)
            return allowed

    def _breaker_record(self, ok: bool) -> None:
        with self._lock:
            before = self.breaker.state
            self.breaker.record(ok)
            self._breaker_changed(before)

    def _breaker_changed(self, before: int) -> None:
        if self.breaker.state != before:
            names = {0: "closed", 1: "open: serving the fallback", 2: "half-open: trying the primary"}
            log.warning("breaker %s (%s)", names[self.breaker.state], self._current.version)
            if self.metrics is not None:
                self.metrics.set_breaker(self.breaker.state)

    def _observe(self, x: np.ndarray, out: np.ndarray, start: float, version: str) -> None:
        seconds = time.perf_counter() - start
        if self.metrics is not None:
            self.metrics.observe(seconds)
        if self.prediction_log is not None:
            self.prediction_log.record(x, out, seconds, version)

    def _capture(self, x: np.ndarray, version: str, exc: BaseException) -> None:
        if self.failures is None:
            return
        fid = self.failures.save(x, version, f"{type(exc).__name__}: {exc}")
        if self.metrics is not None:
            self.metrics.captured(fid is not None)

    def swap(self, folder: Path) -> float:
        """Canary, then load and warm ``folder`` beside the current engine, then switch; returns the seconds.

        Raises :class:`~model_registry.canary.SwapRefused` (the live engine keeps serving) when a check fails.
        """
        start = time.perf_counter()
        try:
            result = preflight(Path(folder), self._current.manifest, self.canary_timeout_s, child=self.canary)
            canary_s = result.seconds if self.canary else None
            new = _Loaded(folder)
            new.warm_up()
        except SwapRefused as exc:
            log.error("%s; still serving %s", exc, self._current.version)
            if self.metrics is not None:
                self.metrics.refused(exc.kind)
            raise
        except Exception as exc:
            log.error("swap to %s failed (%s); still serving %s", folder, exc, self._current.version)
            if self.metrics is not None:
                self.metrics.refused("load")
            raise SwapRefused("load", f"{type(exc).__name__}: {exc}") from exc
        with self._lock:
            old, self._current = self._current, new
        if self.metrics is not None:
            self.metrics.set_version(new.version)
        seconds = time.perf_counter() - start
        self.swaps.append({"from": old.version, "to": new.version, "seconds": seconds, "canary_seconds": canary_s})
        return seconds


__all__ = ["EngineRunner", "FailureStore", "NonFiniteOutput", "SwapRefused", "load_engine", "MANIFEST"]

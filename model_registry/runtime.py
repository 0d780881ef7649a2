"""``EngineRunner``: serve an installed engine, hot-swap it without failing a request, fall back to the CPU
engine behind a circuit breaker, and keep every failed request for replay.

- **Swap**: the new version passes the preflight canary first (:mod:`model_registry.canary`: sha256 of every
  file, the same input/output contract as the served one, then the pre-started canary process loads, warms and
  checks it on the recorded sample). Only then is it loaded beside the live engine and switched by one reference
  assignment; requests in flight finish on the engine they started on. A refusal leaves the live engine
  serving and raises :class:`~model_registry.canary.SwapRefused`.
- **Breaker**: ``breaker_failures`` consecutive failures or non-finite outputs of the primary engine open the
  breaker; requests then go to the fallback engine (the CPU champion, kept loaded). After
  ``breaker_cooldown_s`` one request half-opens it: success closes it, failure reopens it. With no fallback a
  failing request raises.
- **Request contract**: every request is checked, before any engine runs, against the manifest's declared input
  (dtype, rank, fixed dims, the profile's min and max on every dynamic axis, finite values) and refused with
  :class:`BadRequest` naming the input and the bound. Nothing is cast. A refusal is the caller's fault: counted by
  reason (``factory_requests_refused_total{reason}``), never against the engine, the breaker or the failure store.
  Non-finite *outputs* on a valid request stay the engine's fault (:class:`NonFiniteOutput`).
- **Failure capture**: a failed or non-finite request's input, the version and the error go to a bounded
  :class:`FailureStore`, at most ``per_kind`` examples per version and error type an hour (a stream of one failure
  is counted, not stored 1,000 times), and at most ``max_items`` in all (full: dropped and counted);
  ``factory-serve replay-failure`` re-runs one.
- **Bounded history**: a serving process runs for months and swaps every night (or every minute in the soak,
  ``benchmarks/serving_soak.py``), so nothing kept per swap or per request grows with them: ``swaps`` holds the
  newest ``swap_history`` swaps (default :data:`SWAP_HISTORY`) and ``swaps_total`` counts them all; the failure
  store forgets a (version, error type) whose hour is over.

Backends: the runners of :mod:`model_registry.runners`, the same the canary, the gates and the benchmarks use: ONNX
Runtime (CPU) and TensorRT (:class:`model_registry.trt.TensorRTRunner`: pinned buffers, ``execute_async_v3`` on its
own stream, CUDA graphs per shape, one execution context per stream).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from factory_core.contracts import MANIFEST, Manifest, TensorInfo
from factory_core.errors import BadInput

from .canary import (
    SwapRefused,
    WarmCanary,
    contract_mismatch,
    preflight,
    read_manifest,
    shared_canary,
)
from .runners import open_engine

log = logging.getLogger(__name__)

SWAP_HISTORY = 100
"""Swaps kept in :attr:`EngineRunner.swaps`: the newest 100 (three months of nightly swaps), enough to read what
the last swaps cost; older ones are only counted (``swaps_total``)."""


class NonFiniteOutput(RuntimeError):
    """The engine returned NaN or inf on a valid request: the engine's fault, never handed to a caller."""


class BadRequest(BadInput, ValueError):
    """A request that breaks the engine's declared input contract: the caller's fault, refused before any engine
    runs. The message names the input and the bound; ``reason`` (a metric label) is one of ``type``, ``dtype``,
    ``rank``, ``shape`` (a fixed dim), ``batch`` (rows outside the profile), ``axis`` (another dynamic dim outside
    the profile) and ``non-finite``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RequestContract:
    """What a request must be for the engine(s) that may serve it: one input's name, dtype and, per axis, its name
    and the inclusive bounds (a fixed dim has ``lo == hi``; ``hi`` None: no declared maximum)."""

    name: str
    dtype: np.dtype
    axes: tuple[tuple[str, int, int | None], ...]

    @classmethod
    def of(cls, tensor: TensorInfo, also: TensorInfo | None = None) -> RequestContract:
        """The contract of ``tensor``; with ``also`` (the fallback engine's input, same name, dtype and rank), the
        intersection of both profiles, so a request accepted is one either engine can serve."""
        axes = []
        for i, dim in enumerate(tensor.shape):
            lo, hi = _bounds(tensor, i)
            if also is not None:
                lo2, hi2 = _bounds(also, i)
                lo, hi = max(lo, lo2), (hi2 if hi is None else hi if hi2 is None else min(hi, hi2))
            name = dim if isinstance(dim, str) and dim not in ("", "?") else ("batch" if i == 0 else f"axis {i}")
            axes.append((name, lo, hi))
        return cls(tensor.name, np.dtype(tensor.dtype), tuple(axes))

    def describe(self) -> str:
        return "[" + ", ".join(str(lo) if lo == hi else f"{n} {lo}..{'' if hi is None else hi}"
                               for n, lo, hi in self.axes) + f"] {self.dtype}"

    def check(self, x: Any) -> np.ndarray:
        """``x`` as a C-contiguous array of the declared dtype (never cast), or :class:`BadRequest`.

        Vectorised: one ``isfinite`` pass over the array, no per-element Python.
        """
        what = f"input {self.name!r}"
        if not isinstance(x, np.ndarray):
            raise BadRequest("type", f"{what}: expected a numpy array of {self.dtype}, got {type(x).__name__}")
        if x.dtype != self.dtype:
            raise BadRequest("dtype", f"{what}: dtype {x.dtype}, but the engine declares {self.dtype} (requests "
                                      f"are not cast: convert to {self.dtype} before sending)")
        if x.ndim != len(self.axes):
            raise BadRequest("rank", f"{what}: rank {x.ndim} (shape {x.shape}), but the engine declares rank "
                                     f"{len(self.axes)}: {self.describe()}")
        for i, ((axis, lo, hi), got) in enumerate(zip(self.axes, x.shape)):
            if lo == hi and got != lo:
                named = f"axis {i}" if axis == f"axis {i}" else f"axis {i} ({axis})"
                raise BadRequest("shape", f"{what}: {named} is {got}, but the engine declares {lo} (shape "
                                          f"{x.shape}, declared {self.describe()})")
            if got < lo or (hi is not None and got > hi):
                side = f"below the profile's min {lo}" if got < lo else f"above the profile's max {hi}"
                if i == 0:
                    hint = f" (send at most {hi} rows per request)" if got > lo else ""
                    raise BadRequest("batch", f"{what}: batch of {got} rows is {side}{hint}")
                raise BadRequest("axis", f"{what}: axis {i} ({axis}) is {got}, {side} (the engine serves {axis} "
                                         f"{lo}..{'' if hi is None else hi})")
        if x.dtype.kind in "fc" and not np.isfinite(x).all():
            bad = ~np.isfinite(x)
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise BadRequest("non-finite", f"{what}: {int(bad.sum())} NaN/inf value(s), first at index {first}: "
                                           f"non-finite inputs are refused (the caller's data, not the engine)")
        return np.ascontiguousarray(x)


def _bounds(tensor: TensorInfo, i: int) -> tuple[int, int | None]:
    dim = tensor.shape[i]
    if isinstance(dim, int) and dim > 0:
        return dim, dim
    prof = tensor.profile or {}
    lo = int(prof["min"][i]) if prof.get("min") else 1
    hi = int(prof["max"][i]) if prof.get("max") else None
    return lo, hi


class _Loaded:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.version = self.manifest.version
        self.engine = open_engine(self.folder, self.manifest)
        self.accept = RequestContract.of(self.manifest.inputs[0])
        """What a request must be to run here; :class:`EngineRunner` narrows it to the fallback's profile too."""

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
    """Failed requests on local disk, bounded: ``<id>.npy`` (the input) + ``<id>.json`` (version, error, time).

    Two bounds. ``per_kind``: at most this many examples of one (version, error type) per ``kind_window_s``; the
    rest of a stream of the same failure (an engine emitting NaN on 0.7 % of requests: ~130 a second under load)
    is counted in ``duplicates``, not written, so one fault cannot fill the store or slow every failing request
    with disk writes. ``max_items`` in all: when full, a failure is dropped and counted in ``dropped``.
    """

    def __init__(self, root: Path, max_items: int = 1000, per_kind: int = 20, kind_window_s: float = 3600.0):
        if max_items < 1 or per_kind < 1 or kind_window_s <= 0:
            raise ValueError(f"FailureStore needs max_items >= 1, per_kind >= 1 and kind_window_s > 0, got "
                             f"{max_items}, {per_kind}, {kind_window_s}")
        self.root, self.max_items = Path(root), max_items
        self.per_kind, self.kind_window_s = per_kind, kind_window_s
        self.root.mkdir(parents=True, exist_ok=True)
        self.dropped = 0
        self.duplicates = 0
        self._kinds: dict[tuple[str, str], tuple[float, int]] = {}  # (version, error type) -> (window start, saved)
        self._lock = threading.Lock()

    def save(self, x: np.ndarray, version: str, error: str, kind: str | None = None) -> str | None:
        """The saved failure's id, or None when not saved (a duplicate or the store full; counted)."""
        return self.offer(x, version, error, kind)[0]

    def offer(self, x: np.ndarray, version: str, error: str, kind: str | None = None) -> tuple[str | None, str]:
        """``(id, "saved")``, ``(None, "duplicate")`` (``per_kind`` of this version and ``kind``, by default the
        error's type name, already saved this window) or ``(None, "full")``."""
        key = (version, kind or error.split(":", 1)[0])
        with self._lock:
            now = time.monotonic()
            start, n = self._kinds.get(key, (now, 0))
            if now - start >= self.kind_window_s:
                start, n = now, 0
            if n >= self.per_kind:
                self.duplicates += 1
                return None, "duplicate"
            if len(list(self.root.glob("*.json"))) >= self.max_items:
                self.dropped += 1
                return None, "full"
            if key not in self._kinds:  # one key per version ever served: forget those whose window is over
                self._kinds = {k: v for k, v in self._kinds.items() if now - v[0] < self.kind_window_s}
            self._kinds[key] = (start, n + 1)
            fid = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
            np.save(self.root / f"{fid}.npy", np.asarray(x))
            tmp = self.root / f".{fid}.json"
            tmp.write_text(json.dumps({"id": fid, "version": version, "error": error,
                                       "at": dt.datetime.now(dt.timezone.utc).isoformat()}))
            tmp.rename(self.root / f"{fid}.json")  # a record is listed only once its input is on disk
            return fid, "saved"

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
    installed CPU engine kept loaded for the breaker. ``failures``: a :class:`FailureStore`. ``warm_canary``: True
    (default) checks candidates in the process's pre-started canary (:func:`~model_registry.canary.shared_canary`),
    a :class:`~model_registry.canary.WarmCanary` in that one, False in a fresh child per swap (the cold canary).
    ``swaps``: the newest ``swap_history`` swaps (``from``, ``to``, ``seconds``, ``canary_seconds``), oldest first;
    ``swaps_total``: every swap since start.
    """

    checks_requests = True
    """``predict`` checks (and counts) each request against the contract: a batcher in front need not."""

    def __init__(self, folder: Path, metrics: Any = None, prediction_log: Any = None, fallback: Path | None = None,
                 failures: FailureStore | None = None, breaker_failures: int = 5, breaker_cooldown_s: float = 30.0,
                 canary: bool = True, canary_timeout_s: float = 60.0, warm_canary: bool | WarmCanary = True,
                 swap_history: int = SWAP_HISTORY):
        if swap_history < 1:
            raise ValueError(f"EngineRunner needs swap_history >= 1, got {swap_history}")
        self._lock = threading.Lock()
        self._current = _Loaded(folder)
        self._current.warm_up()
        self._fallback = None
        if fallback is not None:
            self._fallback = _Loaded(fallback)
            problem = contract_mismatch(self._current.manifest, self._fallback.manifest)
            if problem:
                raise BadInput(f"fallback {fallback} cannot serve {folder}'s requests: {problem}")
            self._fallback.warm_up()
        self._current.accept = self._contract(self._current)
        self.swaps: deque[dict[str, Any]] = deque(maxlen=swap_history)
        self.swaps_total = 0
        self.metrics, self.prediction_log, self.failures = metrics, prediction_log, failures
        self.breaker = _Breaker(breaker_failures, breaker_cooldown_s)
        self.canary, self.canary_timeout_s = canary, canary_timeout_s
        self.warm_canary: WarmCanary | None = None
        if canary and warm_canary:  # started now, so it has finished its imports by the first swap
            self.warm_canary = warm_canary if isinstance(warm_canary, WarmCanary) else shared_canary()
        if metrics is not None:
            metrics.set_version(self._current.version)
            metrics.set_breaker(0)

    @property
    def version(self) -> str:
        return self._current.version

    @property
    def manifest(self) -> Manifest:
        return self._current.manifest

    def _contract(self, loaded: _Loaded) -> RequestContract:
        fallback = self._fallback.manifest.inputs[0] if self._fallback is not None else None
        return RequestContract.of(loaded.manifest.inputs[0], fallback)

    def check_request(self, x: Any, engine: _Loaded | None = None) -> np.ndarray:
        """``x`` checked against the served engine's declared input (and the fallback's profile), never cast; a
        refusal raises :class:`BadRequest` and is counted by reason, never as an engine failure."""
        try:
            return (engine or self._current).accept.check(x)
        except BadRequest as exc:
            if self.metrics is not None:
                self.metrics.bad_request(exc.reason)
            raise

    def predict(self, x: np.ndarray) -> np.ndarray:
        engine = self._current  # the request keeps this engine even if a swap happens meanwhile
        x = self.check_request(x, engine)  # the caller's fault is refused before the engine or the breaker see it
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
        _, outcome = self.failures.offer(x, version, f"{type(exc).__name__}: {exc}", kind=type(exc).__name__)
        if self.metrics is not None:
            self.metrics.captured(outcome)

    def swap(self, folder: Path) -> float:
        """Canary, then load and warm ``folder`` beside the current engine, then switch; returns the seconds.

        Raises :class:`~model_registry.canary.SwapRefused` (the live engine keeps serving) when a check fails.
        """
        start = time.perf_counter()
        try:
            result = preflight(Path(folder), self._current.manifest, self.canary_timeout_s, child=self.canary,
                               warm=self.warm_canary)
            canary_s = result.seconds if self.canary else None
            new = _Loaded(folder)
            new.warm_up()
            new.accept = self._contract(new)
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
        with self._lock:
            self.swaps.append({"from": old.version, "to": new.version, "seconds": seconds, "canary_seconds": canary_s})
            self.swaps_total += 1
        return seconds


__all__ = ["BadRequest", "EngineRunner", "FailureStore", "NonFiniteOutput", "RequestContract", "SwapRefused",
           "MANIFEST", "SWAP_HISTORY"]

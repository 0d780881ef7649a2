"""The preflight canary: a new engine version is loaded, warmed and checked in another process before the
serving process touches it.

TensorRT has no preflight API: a bad or incompatible plan can crash the process that deserializes it. So the
serving process first checks, itself, what needs no loading (the bytes against the manifest's sha256s, the
input contract against the one it serves), then has another process load the engine and waits a bounded time.
That process is the :class:`WarmCanary` (pre-started, numpy, ONNX Runtime and, where present, TensorRT already
imported; restarted after a crash or a hang) or, cold, a fresh ``python -m model_registry.canary FOLDER``. Either
runs :func:`check_engine`: the engine through the same runner the server uses and the build host recorded the sample
with (:mod:`model_registry.runners`), the engine's own tensor names against its manifest, the profile's min and opt
shapes, and the manifest's recorded sample (``canary.npz``: 1,024 test windows drawn uniformly plus the gates' tail
windows, run in chunks of the profile's max batch; a failure on 0.5 % of inputs is in it with probability 99.4 %).
A child that crashes (any signal), hangs past the bound, or disagrees leaves the live engine serving; the reason is
logged, counted (``factory_canary_refused_total{reason}``) and raised as :class:`SwapRefused`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from factory_core import contracts
from factory_core.contracts import Manifest, TensorInfo, hash_mismatch
from factory_core.errors import BadInput, ManifestError


class SwapRefused(BadInput):
    """The new version failed a preflight check; the live engine keeps serving."""

    def __init__(self, kind: str, reason: str):
        super().__init__(f"swap refused ({kind}): {reason}")
        self.kind, self.reason = kind, reason


@dataclass
class CanaryResult:
    seconds: float
    checks: list[str]


def read_manifest(folder: Path) -> Manifest:
    """The folder's manifest through the one reader (:func:`factory_core.contracts.read_manifest`); a malformed or
    missing one refuses the swap with kind ``manifest``, the :class:`ManifestError` as its cause."""
    try:
        return contracts.read_manifest(Path(folder))
    except ManifestError as exc:
        raise SwapRefused("manifest", str(exc)) from exc


def contract(tensors: list[TensorInfo]) -> list[tuple[str, str, int, tuple]]:
    """Names, dtypes, ranks and fixed dims (a dynamic dim as ``?``): what a caller's requests depend on."""
    return [(t.name, t.dtype, len(t.shape), tuple(d if isinstance(d, int) and d > 0 else "?" for d in t.shape))
            for t in tensors]


def contract_mismatch(live: Manifest, new: Manifest) -> str | None:
    for what, a, b in (("input", live.inputs, new.inputs), ("output", live.outputs, new.outputs)):
        if contract(a) != contract(b):
            return f"{what} contract {contract(b)} differs from the served {contract(a)}"
    return None


def int8_kernels_mismatch(new: Manifest, here: str | None = None) -> str | None:
    """An INT8 ONNX Runtime engine whose build host ran other integer kernels than this host (``here``: this
    host's :func:`~factory_core.availability.cpu_int8_kernels`): its gates measured numbers this host would not
    compute, by more than the canary's INT8 tolerance can see (docs/gates.md, "INT8 on CPUs without VNNI").
    None when they match, for other precisions and backends, and for engines that did not record it."""
    built = new.host.get("cpu_int8")
    if new.backend != "onnxruntime" or new.precision != "int8" or not built:
        return None
    from factory_core.availability import cpu_int8_kernels

    here = here or cpu_int8_kernels()
    if built == here:
        return None
    return (f"INT8 ONNX Runtime engine gated on a host with {built} integer kernels; this host has {here}, whose "
            f"fused Q/DQ kernels compute other numbers than the gates measured (serve the fp16/fp32 variant here, "
            f"or build and gate the cpu target on a host like this one)")


def preflight(folder: Path, live: Manifest | None, timeout_s: float = 60.0,
              command: list[str] | None = None, child: bool = True, warm: WarmCanary | None = None) -> CanaryResult:
    """Check ``folder`` before a swap; raises :class:`SwapRefused` with the reason, else returns what passed.

    ``child=False``: only the checks that need no loading (sha256, INT8 kernels, contract). ``warm``: load and check in that
    pre-started process; else in a fresh ``python -m model_registry.canary`` child (``command`` replaces its
    command line: tests simulate a crashing or hanging child with it).
    """
    start = time.perf_counter()
    folder = Path(folder)
    new = read_manifest(folder)
    problem = hash_mismatch(folder, new)
    if problem:
        raise SwapRefused("sha256", problem)
    checks = ["sha256 of every listed file"]
    problem = int8_kernels_mismatch(new)
    if problem:
        raise SwapRefused("cpu_int8", problem)
    if live is not None:
        if new.family != live.family:
            raise SwapRefused("contract", f"family {new.family} is not the served {live.family}")
        problem = contract_mismatch(live, new)
        if problem:
            raise SwapRefused("contract", problem)
        checks.append("input/output contract")
    if not child:
        return CanaryResult(seconds=time.perf_counter() - start, checks=checks)
    verdict = warm.check(folder, timeout_s) if warm is not None else _cold_verdict(folder, timeout_s, command)
    if not verdict.get("ok"):
        raise SwapRefused(verdict.get("kind", "canary"), verdict.get("reason", "no reason given"))
    return CanaryResult(seconds=time.perf_counter() - start, checks=checks + verdict["checks"])


def _cold_verdict(folder: Path, timeout_s: float, command: list[str] | None) -> dict[str, Any]:
    """The verdict of a fresh child process (``python -m model_registry.canary FOLDER``)."""
    cmd = command or [sys.executable, "-m", "model_registry.canary", str(folder)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SwapRefused("hang", f"canary did not finish within {timeout_s:.0f} s (killed)") from None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise SwapRefused("crash", f"canary child died with {name} loading {folder.name}: {proc.stderr[-500:]}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SwapRefused("crash", f"canary exited {proc.returncode} without a verdict: {proc.stderr[-500:]}") from None


def verdict(folder: Path, check: Callable[[Path], list[str]] | None = None) -> dict[str, Any]:
    """In the child (cold or warm): ``check`` (default :func:`check_engine`) as a JSON-able verdict."""
    try:
        return {"ok": True, "checks": (check or check_engine)(Path(folder))}
    except SwapRefused as exc:
        return {"ok": False, "kind": exc.kind, "reason": exc.reason}
    except Exception as exc:
        return {"ok": False, "kind": "load", "reason": f"{type(exc).__name__}: {exc}"}


def _preload() -> None:
    """What a check needs, imported once in the warm child before any request arrives."""
    import onnxruntime  # noqa: F401

    from . import runners  # noqa: F401

    try:  # a GPU serving host: the TensorRT runner's imports too
        import tensorrt  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        pass


def _serve(conn: Any, check: Callable[[Path], list[str]] | None) -> None:
    """The warm child: preload, say ready, then one verdict per folder received until the pipe closes."""
    _preload()
    conn.send({"ready": True})
    while True:
        try:
            folder = conn.recv()
        except (EOFError, OSError):
            return
        if folder is None:
            return
        conn.send(verdict(Path(folder), check))


class WarmCanary:
    """A pre-started canary process (``multiprocessing`` 'spawn': a fresh interpreter, nothing inherited from the
    serving process) with numpy, ONNX Runtime and, where present, TensorRT already imported. ``check(folder)``
    sends it one folder over a pipe and waits at most ``timeout_s`` for the verdict. A child that dies (any
    signal or exit) is a ``crash``, one that does not answer in time is killed: a ``hang``; either way a new child
    is started at once for the next check. Checks are serialized (one child, one request at a time).

    ``check`` replaces :func:`check_engine` in the child (a picklable module-level function: tests plant a crash
    or a hang with it).
    """

    def __init__(self, check: Callable[[Path], list[str]] | None = None):
        import multiprocessing

        self._ctx = multiprocessing.get_context("spawn")
        self._check = check
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Any = None
        self._ready = False
        self.restarts = 0

    def start(self) -> WarmCanary:
        """Start the child if none is running (returns at once; it preloads in the background)."""
        with self._lock:
            self._start()
        return self

    def _start(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, args=(child, self._check), name="factory-canary", daemon=True)
        proc.start()
        child.close()  # the parent's copy: EOF reaches us when the child dies
        self._proc, self._conn, self._ready = proc, parent, False

    def _stop(self, kill: bool) -> int | None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is None:
            return None
        if kill and proc.is_alive():
            proc.kill()
        proc.join(5)
        conn.close()
        return proc.exitcode

    def _receive(self, deadline: float, folder: Path) -> dict[str, Any]:
        if not self._conn.poll(max(0.0, deadline - time.monotonic())):
            self._stop(kill=True)
            self.restarts += 1
            self._start()
            raise SwapRefused("hang", f"warm canary did not answer on {folder.name} in time (killed, restarted)")
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            code = self._stop(kill=True)
            self.restarts += 1
            self._start()
            died = f"died with {signal.Signals(-code).name}" if code and code < 0 else f"exited {code}"
            raise SwapRefused("crash", f"warm canary {died} checking {folder.name} (restarted)") from None

    def check(self, folder: Path, timeout_s: float = 60.0) -> dict[str, Any]:
        """The child's verdict on ``folder`` (``{"ok": ...}`` as :func:`verdict`), or :class:`SwapRefused` for a
        crash or a hang. A child still starting counts its start-up against ``timeout_s``."""
        folder = Path(folder)
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._start()
            if not self._ready:
                self._receive(deadline, folder)  # {"ready": True}
                self._ready = True
            self._conn.send(str(folder))
            return self._receive(deadline, folder)

    def close(self) -> None:
        """Ask the child to exit (killed if it does not within 2 s)."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._proc.join(2)
            self._stop(kill=True)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None


_SHARED: WarmCanary | None = None
_SHARED_LOCK = threading.Lock()


def shared_canary() -> WarmCanary:
    """The process's warm canary, started on first use (every :class:`~model_registry.runtime.EngineRunner` of
    a serving process shares it: one extra process, however many families it serves)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = WarmCanary()
        return _SHARED.start()


def check_engine(folder: Path) -> list[str]:
    """In the child: load, warm and check the engine; returns what passed, raises :class:`SwapRefused`.

    It runs the engine through the same runner (:func:`model_registry.runners.open_engine`, options from the
    manifest) and the same chunking (:func:`~model_registry.runners.infer_batched`, the profile's max batch) that
    recorded the sample on the build host.
    """
    from .runners import declared_mismatch, infer_batched, open_engine

    folder = Path(folder)
    m = read_manifest(folder)
    engine = open_engine(folder, m)
    try:
        problem = declared_mismatch(engine, m)
        if problem:
            raise SwapRefused("contract", problem)
        checks = ["the engine's own tensor names and input dtypes match its manifest"]
        prof = m.inputs[0].profile or {"min": [1, *m.inputs[0].shape[1:]]}
        rng = np.random.default_rng(0)
        for name in ("min", "opt"):
            shape = prof.get(name)
            if not shape:
                continue
            x = rng.standard_normal(shape).astype(np.dtype(m.inputs[0].dtype))
            for _ in range(5):
                out = engine.infer(x)
            _check_output(m, out, len(x), f"random input at the profile's {name} shape {tuple(shape)}")
        checks.append("finite outputs of the declared shape and dtype at the profile's min and opt shapes")
        if m.canary is not None:
            with np.load(folder / m.canary.file) as z:
                x, expected = z["inputs"], z["expected"]
            step = int(prof["max"][0]) if prof.get("max") else max(len(x), 1)  # within the profile, as recorded
            out = infer_batched(engine, x, step)
            bad = ~np.isfinite(out).reshape(len(out), -1).all(axis=1)
            if bad.any():
                raise SwapRefused("non-finite", f"non-finite outputs on {int(bad.sum())} of the {len(x)} windows of "
                                                f"the recorded sample (first: window {int(np.argmax(bad))})")
            _check_output(m, out, len(x), "the recorded sample")
            err = np.abs(out.astype(np.float64) - expected)
            bound = m.canary.atol + m.canary.rtol * np.abs(expected)
            if not (err <= bound).all():
                raise SwapRefused("disagrees", f"on the recorded sample the engine's outputs differ from the build "
                                               f"host's by up to {err.max():.3g} (atol {m.canary.atol}, rtol "
                                               f"{m.canary.rtol})")
            checks.append(f"recorded sample of {len(x)} rows within atol {m.canary.atol}, rtol {m.canary.rtol}")
        return checks
    finally:
        engine.close()


def _check_output(m: Manifest, out: np.ndarray, batch: int, what: str) -> None:
    decl = m.outputs[0]
    want = [batch, *[d for d in decl.shape[1:]]]
    if out.ndim != len(want) or any(isinstance(w, int) and w > 0 and w != g for w, g in zip(want, out.shape)):
        raise SwapRefused("shape", f"output shape {out.shape} on {what}, declared {decl.shape}")
    if not np.isfinite(out).all():
        raise SwapRefused("non-finite", f"{int((~np.isfinite(out)).sum())} non-finite outputs on {what}")


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(verdict(Path((argv or sys.argv[1:])[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

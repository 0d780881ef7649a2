"""The preflight canary: a new engine version is loaded, warmed and checked in a child process before the
serving process touches it.

TensorRT has no preflight API: a bad or incompatible plan can crash the process that deserializes it. So the
serving process first checks, itself, what needs no loading (the bytes against the manifest's sha256s, the
input contract against the one it serves), then runs ``python -m model_registry.canary FOLDER`` and waits a
bounded time. The child loads the engine through the same loader the server uses, runs it at the profile's
min and opt shapes and on the manifest's recorded sample (``canary.npz``: 1,024 test windows drawn uniformly plus
the gates' tail windows, run in chunks of the profile's max batch; a failure on 0.5 % of inputs is in it with
probability 99.4 %), and prints one JSON verdict. A child that crashes
(any signal), hangs past the bound, or disagrees leaves the live engine serving; the reason is logged, counted
(``factory_canary_refused_total{reason}``) and raised as :class:`SwapRefused`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from factory_core.contracts import MANIFEST, Manifest, TensorInfo, hash_mismatch
from factory_core.errors import BadInput


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
    path = Path(folder) / MANIFEST
    try:
        return Manifest.model_validate_json(path.read_text())
    except (OSError, ValueError) as exc:
        raise SwapRefused("manifest", f"{path}: {exc}") from exc


def contract(tensors: list[TensorInfo]) -> list[tuple[str, str, int, tuple]]:
    """Names, dtypes, ranks and fixed dims (a dynamic dim as ``?``): what a caller's requests depend on."""
    return [(t.name, t.dtype, len(t.shape), tuple(d if isinstance(d, int) and d > 0 else "?" for d in t.shape))
            for t in tensors]


def contract_mismatch(live: Manifest, new: Manifest) -> str | None:
    for what, a, b in (("input", live.inputs, new.inputs), ("output", live.outputs, new.outputs)):
        if contract(a) != contract(b):
            return f"{what} contract {contract(b)} differs from the served {contract(a)}"
    return None


def preflight(folder: Path, live: Manifest | None, timeout_s: float = 60.0,
              command: list[str] | None = None, child: bool = True) -> CanaryResult:
    """Check ``folder`` before a swap; raises :class:`SwapRefused` with the reason, else returns what passed.

    ``child=False``: only the checks that need no loading (sha256, contract). ``command`` replaces the child's
    command line (tests simulate a crashing or hanging child with it).
    """
    start = time.perf_counter()
    folder = Path(folder)
    new = read_manifest(folder)
    problem = hash_mismatch(folder, new)
    if problem:
        raise SwapRefused("sha256", problem)
    checks = ["sha256 of every listed file"]
    if live is not None:
        if new.family != live.family:
            raise SwapRefused("contract", f"family {new.family} is not the served {live.family}")
        problem = contract_mismatch(live, new)
        if problem:
            raise SwapRefused("contract", problem)
        checks.append("input/output contract")
    if not child:
        return CanaryResult(seconds=time.perf_counter() - start, checks=checks)
    cmd = command or [sys.executable, "-m", "model_registry.canary", str(folder)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SwapRefused("hang", f"canary did not finish within {timeout_s:.0f} s (killed)") from None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise SwapRefused("crash", f"canary child died with {name} loading {folder.name}: {proc.stderr[-500:]}")
    try:
        verdict = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SwapRefused("crash", f"canary exited {proc.returncode} without a verdict: {proc.stderr[-500:]}") from None
    if not verdict.get("ok"):
        raise SwapRefused(verdict.get("kind", "canary"), verdict.get("reason", "no reason given"))
    return CanaryResult(seconds=time.perf_counter() - start, checks=checks + verdict["checks"])


def check_engine(folder: Path) -> list[str]:
    """In the child: load, warm and check the engine; returns what passed, raises :class:`SwapRefused`."""
    from .runtime import load_engine

    folder = Path(folder)
    m = read_manifest(folder)
    engine = load_engine(folder, m)
    checks = []
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
        out = np.concatenate([engine.infer(np.ascontiguousarray(x[i:i + step])) for i in range(0, len(x), step)])
        bad = ~np.isfinite(out).reshape(len(out), -1).all(axis=1)
        if bad.any():
            raise SwapRefused("non-finite", f"non-finite outputs on {int(bad.sum())} of the {len(x)} windows of the "
                                            f"recorded sample (first: window {int(np.argmax(bad))})")
        _check_output(m, out, len(x), "the recorded sample")
        err = np.abs(out.astype(np.float64) - expected)
        bound = m.canary.atol + m.canary.rtol * np.abs(expected)
        if not (err <= bound).all():
            raise SwapRefused("disagrees", f"on the recorded sample the engine's outputs differ from the build "
                                           f"host's by up to {err.max():.3g} (atol {m.canary.atol}, rtol {m.canary.rtol})")
        checks.append(f"recorded sample of {len(x)} rows within atol {m.canary.atol}, rtol {m.canary.rtol}")
    engine.close()
    return checks


def _check_output(m: Manifest, out: np.ndarray, batch: int, what: str) -> None:
    decl = m.outputs[0]
    want = [batch, *[d for d in decl.shape[1:]]]
    if out.ndim != len(want) or any(isinstance(w, int) and w > 0 and w != g for w, g in zip(want, out.shape)):
        raise SwapRefused("shape", f"output shape {out.shape} on {what}, declared {decl.shape}")
    if not np.isfinite(out).all():
        raise SwapRefused("non-finite", f"{int((~np.isfinite(out)).sum())} non-finite outputs on {what}")


def main(argv: list[str] | None = None) -> int:
    folder = Path((argv or sys.argv[1:])[0])
    try:
        verdict = {"ok": True, "checks": check_engine(folder)}
    except SwapRefused as exc:
        verdict = {"ok": False, "kind": exc.kind, "reason": exc.reason}
    except Exception as exc:  # noqa: BLE001 - any load failure is a refusal with its reason
        verdict = {"ok": False, "kind": "load", "reason": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The engine-builder interface, the manifest, and the one build routine every backend shares.

A backend says whether it can build a target on this worker (and why not), which
plain command line builds it, and which file it produces. :func:`build_engine` does
the rest the same way for all: copy the variant's ONNX in, write ``reproduce.sh``,
run the command as a subprocess (log beside it), hash, write ``manifest.json``, and
commit the directory only when all of it is there.
"""

from __future__ import annotations

import datetime as dt
import logging
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from factory_core.config import FamilyConfig, TargetConfig
from factory_core.contracts import (
    CANARY_FILE,
    MANIFEST,
    SOURCE_ONNX,
    CanarySample,
    Manifest,
    TensorInfo,
    hash_mismatch,
    read_manifest,
)
from factory_core.errors import BadInput, Unavailable
from factory_core.families import spec
from factory_core.fsutil import committed_dir, sha256_file, write_json
from factory_core.precisions import precision as precision_spec

log = logging.getLogger(__name__)

REPRODUCE = "reproduce.sh"
MLMODEL = "MLmodel"
BUILD_LOG = "build.log"
RESULT = "build_result.json"


class EngineBuildError(BadInput, RuntimeError):
    """A build failed on input it was given (e.g. an ONNX the parser rejects); names the file and target."""


class TargetUnavailableError(Unavailable, RuntimeError):
    """A ``required`` target cannot be built on this worker; names the target and why."""


@dataclass(frozen=True)
class Shapes:
    """One input's optimization profile: shapes at min, opt and max."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class BuildSpec:
    family: str
    version: str
    precision: str
    target: TargetConfig
    onnx: Path
    calibration_sha256: str | None
    profile: dict[str, Shapes]
    options: dict[str, Any] = field(default_factory=dict)
    """Backend options from config (workspace, optimization level, threads…)."""


class EngineBuilder(Protocol):
    backend: str
    engine_file: str

    def unavailable_reason(self, target: TargetConfig) -> str | None:
        """Why this worker cannot build ``target``; None when it can."""

    def backend_version(self) -> str: ...

    def compute_capability(self, target: TargetConfig) -> str | None: ...

    def command(self, spec: BuildSpec) -> list[str]:
        """The build as plain arguments, run from inside the engine directory."""


def onnx_io(onnx_path: Path, family: str, family_cfg: FamilyConfig) -> tuple[list[TensorInfo], list[TensorInfo], dict[str, Shapes]]:
    """Inputs/outputs of an ONNX graph and the optimization profile for its dynamic dims.

    Dim 0 is the batch (1 / ``opt_batch`` / ``max_batch``); any other dynamic dim is the
    sequence (its family's ``window_range`` with the trained window as opt). Static dims
    stay as they are.
    """
    import onnx
    from onnx import helper

    seq = spec(family).window_range
    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}

    def info(v: Any) -> tuple[str, list[int | str]]:
        t = v.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name
        return dtype, [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]

    inputs, outputs, profile = [], [], {}
    for v in model.graph.input:
        if v.name in inits:
            continue
        dtype, shape = info(v)
        lo, mid, hi = [], [], []
        for i, d in enumerate(shape):
            if isinstance(d, int) and d > 0:
                lo.append(d), mid.append(d), hi.append(d)
            elif i == 0:
                lo.append(1), mid.append(family_cfg.opt_batch), hi.append(family_cfg.max_batch)
            else:
                lo.append(seq[0]), mid.append(family_cfg.window), hi.append(seq[1])
        profile[v.name] = Shapes(tuple(lo), tuple(mid), tuple(hi))
        inputs.append(TensorInfo(name=v.name, dtype=dtype, shape=shape,
                                 profile={"min": lo, "opt": mid, "max": hi}))
    for v in model.graph.output:
        dtype, shape = info(v)
        outputs.append(TensorInfo(name=v.name, dtype=dtype, shape=shape))
    return inputs, outputs, profile


def shape_arg(name: str, shape: tuple[int, ...]) -> str:
    """``features:1x60x16``, the plain form the build scripts take."""
    return f"{name}:{'x'.join(str(d) for d in shape)}"


def parse_shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    name, _, dims = text.rpartition(":")
    if not name or not dims:
        raise ValueError(f"shape {text!r}: expected NAME:D0xD1x…")
    return name, tuple(int(d) for d in dims.split("x"))


def _write_reproduce(path: Path, cmd: list[str], note: str) -> None:
    body = ["#!/usr/bin/env bash",
            "# Rebuilds this engine from model.onnx in this directory (needs the model-factory package",
            "# installed, and for TensorRT the same TensorRT version on the same GPU architecture).",
            *(f"# {line}" for line in note.splitlines() if line),
            "set -euo pipefail",
            'cd "$(dirname "$0")"',
            " ".join(shlex.quote(c) for c in ["python", *cmd[1:]]) + ' "$@"', ""]
    path.write_text("\n".join(body))
    path.chmod(0o755)


def run_logged(cmd: list[str], cwd: Path, log_path: Path, timeout_s: int, what: str) -> None:
    """Run ``cmd`` with its output in ``log_path``; raise :class:`EngineBuildError` with the log's tail on failure."""
    log.info("building %s", what)
    with open(log_path, "w") as logf:
        try:
            rc = subprocess.run(cmd, cwd=cwd, stdout=logf, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            raise EngineBuildError(f"{what}: build timed out after {timeout_s}s") from None
    if rc != 0:
        tail = log_path.read_text().strip().splitlines()[-15:]
        raise EngineBuildError(f"{what}: build exited with code {rc}; last lines of {log_path.name}:\n  "
                               + "\n  ".join(tail))


def build_engine(builder: EngineBuilder, spec: BuildSpec, dest: Path, inputs: list[TensorInfo],
                 outputs: list[TensorInfo], host: dict[str, Any], note: str = "",
                 sample: Any = None) -> Manifest:
    """Build ``spec`` with ``builder`` into ``dest`` (committed only when complete) and return its manifest.

    ``sample`` (a batch of real inputs): run through the built engine here, saved with its outputs as the
    canary sample a serving host checks the engine against before taking traffic.
    """
    import json

    what = f"{spec.family}/{spec.precision} for {spec.target.name} ({builder.backend}) from {spec.onnx.name}"
    started = dt.datetime.now(dt.timezone.utc)
    with committed_dir(dest) as tmp:
        shutil.copyfile(spec.onnx, tmp / SOURCE_ONNX)
        cmd = builder.command(spec)
        _write_reproduce(tmp / REPRODUCE, cmd, note)
        t0 = time.perf_counter()
        run_logged(cmd, tmp, tmp / BUILD_LOG, int(spec.options.get("build_timeout_s", 1800)), what)
        seconds = time.perf_counter() - t0
        engine = tmp / builder.engine_file
        if not engine.is_file() or engine.stat().st_size == 0:
            raise EngineBuildError(f"{what}: the build exited 0 but wrote no {builder.engine_file}")
        result = json.loads((tmp / RESULT).read_text()) if (tmp / RESULT).is_file() else {}
        if inputs and outputs:  # a graph without declared tensors has no signature to state
            write_signature(tmp / MLMODEL, inputs, outputs)
        prof = inputs[0].profile if inputs else None
        options = {**spec.options, **result}
        canary = (_record_canary(builder, tmp, spec.precision, sample, int(prof["max"][0]) if prof else None,
                                 options) if sample is not None else None)
        manifest = Manifest(
            family=spec.family, version=spec.version, target=spec.target.name,
            compute_capability=builder.compute_capability(spec.target), backend=builder.backend,
            backend_version=builder.backend_version(), precision=spec.precision, engine_file=builder.engine_file,
            onnx_file=SOURCE_ONNX, inputs=inputs, outputs=outputs,
            sha256={"engine": sha256_file(engine), "onnx": sha256_file(tmp / SOURCE_ONNX),
                    "calibration": spec.calibration_sha256},
            build={"seconds": round(seconds, 3), "started_at": started.isoformat(),
                   "command": shlex.join(["python", *cmd[1:]]), "options": options,
                   "hardware_compatibility": spec.target.hardware_compatibility},
            host=host, versions=_versions(builder),
            files={f.name: sha256_file(f) for f in sorted(tmp.iterdir()) if f.is_file() and f.name != MANIFEST},
            canary=canary)
        write_json(tmp / MANIFEST, manifest.to_xcom())
    return manifest


def _record_canary(builder: EngineBuilder, folder: Path, precision: str, sample: Any,
                   max_batch: int | None = None, options: dict[str, Any] | None = None) -> CanarySample:
    """The engine's own outputs on ``sample``, here on its build host, saved beside it (``canary.npz``).

    Run in chunks of the profile's ``max_batch`` rows (a sample of any size fits an engine's profile) through the
    runner the serving canary checks it with (:func:`model_registry.runners.open_runner` with the manifest's
    ``build.options``, :func:`~model_registry.runners.infer_batched`): the same code records and checks. Non-finite outputs here are recorded and logged, not raised: the sample is
    large (:data:`~factory_core.contracts.CANARY_ROWS`) and holds the tail windows, so an engine that fails on rare
    inputs now shows it here, and the gate (every test window) is what rejects it, as a verdict; a build task that
    raised would fail the family's night instead. Such an engine's canary would refuse it anyway.
    """
    import numpy as np

    from model_registry.runners import engine_options, infer_batched, open_runner

    x = np.ascontiguousarray(sample, dtype=np.float32)
    if len(x) == 0:
        raise EngineBuildError(f"{folder.name}: the canary sample is empty (no test or validation windows?)")
    runner = open_runner(folder / builder.engine_file, builder.backend, **engine_options(options or {}))
    try:
        expected = infer_batched(runner, x, max_batch or len(x))
    finally:
        runner.close()
    if not np.isfinite(expected).all():
        bad = int((~np.isfinite(expected)).reshape(len(x), -1).any(axis=1).sum())
        log.warning("%s: the built engine emits non-finite outputs on %d of the %d canary windows (the gate will "
                    "reject it)", folder.name, bad, len(x))
    np.savez(folder / CANARY_FILE, inputs=x, expected=np.asarray(expected, dtype=np.float32))
    atol, rtol = precision_spec(precision).canary  # another host of the target may pick other kernels
    return CanarySample(file=CANARY_FILE, rows=len(x), atol=atol, rtol=rtol)


def write_signature(path: Path, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> Path:
    """An ``MLmodel`` file holding the engine's tensor signature (dynamic dims as -1).

    It travels with the engine into the store, the registered version's source: MLflow's UI reads it there for
    the version's Schema section.
    """
    import numpy as np
    from mlflow.models import Model, ModelSignature
    from mlflow.types import Schema, TensorSpec

    def schema(tensors: list[TensorInfo]) -> Schema:
        return Schema([TensorSpec(np.dtype(t.dtype), tuple(d if isinstance(d, int) and d > 0 else -1 for d in t.shape),
                                  t.name) for t in tensors])

    Model(signature=ModelSignature(inputs=schema(inputs), outputs=schema(outputs))).save(str(path))
    return path


def _versions(builder: EngineBuilder) -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0], builder.backend: builder.backend_version()}
    for dist in ("onnx", "onnxruntime", "polygraphy", "nvidia-modelopt", "torch", "model-factory"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def verify_manifest(engine_dir: Path) -> Manifest:
    """Read ``manifest.json`` and check the engine and ONNX bytes against its sha256s.

    Raises:
        factory_core.errors.ManifestError: the manifest is missing or malformed (the one reader's error).
        EngineBuildError: a file is missing or its hash differs (names which).
    """
    m = read_manifest(Path(engine_dir))
    problem = hash_mismatch(Path(engine_dir), m)
    if problem:
        raise EngineBuildError(f"{engine_dir}: {problem}")
    return m

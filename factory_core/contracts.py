"""The contracts: every record that crosses a task, a package or a host, typed.

Stages pass these between Airflow tasks as XCom JSON; the engine store and the registry read and
write the :class:`Manifest`; serving hosts read it back. Big things travel as URIs; these records only
say where they are and how they went.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, JsonValue, computed_field, model_validator

from .errors import ManifestError
from .fsutil import sha256_file

MANIFEST = "manifest.json"
SOURCE_ONNX = "model.onnx"


class Status(StrEnum):
    OK = "ok"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    FAILED = "failed"


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_xcom(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Plan(Record):
    date: str
    lake_dates: list[str]
    families: list[str]
    targets: list[str]
    """Configured targets this run builds (the run's params may narrow them); the others record ``skipped``."""
    run_uri: str
    """The night's folder under the run root: a path or ``s3://…``."""
    trigger: str = "schedule"
    """Why the night runs: ``schedule``, ``manual``, or the drift monitor's reason."""


class LakeSnapshot(Record):
    lake_uri: str
    dates: list[str]
    partitions: list[str]
    rows: int
    written: int
    """Partitions this run wrote (0 when the lake already had them all)."""


class FeatureSet(Record):
    market_uri: str
    fraud_uri: str
    market_rows: int
    fraud_rows: int


class TrainResult(Record):
    family: str
    status: Status
    checkpoint_uri: str
    splits_uri: str
    telemetry_uri: str = ""
    """GPU telemetry sampled during training (GPU workers only)."""
    metrics: dict[str, float]
    """Test-split metrics of the trained model (PyTorch, FP32)."""
    n_train: int
    n_val: int
    n_test: int
    epochs: int
    device: str
    seconds: float


class ExportResult(Record):
    family: str
    status: Status
    onnx_uri: str
    opset: int
    max_abs_err: float
    max_rel_err: float
    reason: str = ""
    checkpoint_uri: str
    splits_uri: str


class Variant(Record):
    precision: str
    onnx_uri: str
    sha256: str
    seconds: float
    val_metrics: dict[str, float]
    """Accuracy of this graph in ONNX Runtime (CPU) on the validation split."""
    kept_fp32: list[str] = []
    coverage: dict[str, dict[str, int]] = {}
    cache_hit: bool = False


class VariantSet(Record):
    family: str
    calibration_sha256: str
    calibration_method: str
    variants: list[Variant]
    not_offered: dict[str, str] = {}
    """Precisions not offered as candidates, with the reason (``int8``: no layer quantized)."""
    checkpoint_uri: str
    splits_uri: str


class EngineResult(Record):
    """One (family, precision, target) build: ``ok`` with its manifest, or ``skipped`` with the reason."""

    family: str
    precision: str
    target: str
    backend: str
    status: Status
    reason: str = ""
    engine_dir: str = ""
    """The engine's folder under the run root (URI)."""
    engine_sha256: str = ""
    backend_version: str = ""
    seconds: float = 0.0
    required: bool = False


class Decision(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    UNDECIDED = "undecided"


class Check(Record):
    """One gate check: what was measured, against which bound, with what interval, and the decision.

    ``undecided`` (too little evidence) never rejects by itself; ``gating=False`` marks a diagnostic.
    """

    name: str
    decision: Decision
    value: float | None = None
    bound: float | None = None
    ci: tuple[float, float] | None = None
    n: int | None = None
    gating: bool = True
    detail: str = ""
    holds_champion: bool = False
    """The engine may be registered (alias ``challenger``) but not promoted: set on an undecided champion
    comparison under ``gates.champion.undecided: keep_champion``."""

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: Any) -> Any:
        if isinstance(data, dict) and "ok" in data:
            data = {k: v for k, v in data.items() if k != "ok"}
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        return not (self.gating and self.decision is Decision.FAIL)


def passed(name: str, value: float | None = None, bound: float | None = None, detail: str = "", **kw: Any) -> Check:
    return Check(name=name, decision=Decision.PASS, value=value, bound=bound, detail=detail, **kw)


def failed(name: str, value: float | None = None, bound: float | None = None, detail: str = "", **kw: Any) -> Check:
    return Check(name=name, decision=Decision.FAIL, value=value, bound=bound, detail=detail, **kw)


def undecided(name: str, detail: str, n: int | None = None, **kw: Any) -> Check:
    return Check(name=name, decision=Decision.UNDECIDED, n=n, detail=detail, **kw)


class _Checked(Record):
    checks: list[Check]

    @property
    def reasons(self) -> list[str]:
        """The sentences of the failed gating checks."""
        return [c.detail for c in self.checks if not c.ok]

    @property
    def undecided(self) -> list[str]:
        return [c.detail for c in self.checks if c.decision is Decision.UNDECIDED]


class Verdict(_Checked):
    family: str
    precision: str
    status: Status
    onnx_sha256: str = ""
    """The graph this verdict is about: an engine is eligible only when built from it (lineage)."""
    metrics: dict[str, float] = {}


Scalar = str | int | float | bool | None


class Latency(Record):
    """Latency of one runner at one batch size, pooled over the rounds, with each round's p50 and p99."""

    batch: int
    iters: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    throughput: float
    """Samples per second at this batch (batch / mean latency)."""
    rounds_p50_ms: list[float] = []
    rounds_p99_ms: list[float] = []


class HostLoad(Record):
    """What else the host was doing while it timed (load average before and after, this process's CPU share)."""

    loadavg_1m_before: float
    loadavg_1m_after: float
    cpus: float
    process_cpu_share: float
    rounds: int
    calls_per_round: int


class Benchmark(Record):
    """One runner's interleaved benchmark on its target's host (:func:`pipelines.benchmark.benchmark_interleaved`)."""

    runner: str
    info: dict[str, Scalar] = {}
    """The runner's backend facts: threads, provider, TensorRT version, CUDA graphs…"""
    host: HostLoad
    batch1: Latency
    opt: Latency
    telemetry: dict[str, Scalar | dict[str, Scalar]] | None = None
    """NVML summary during the benchmark (GPU targets)."""


class Candidate(_Checked):
    precision: str
    engine_dir: str
    version: str
    status: Status
    auc: float | None = None
    p99_ms: float | None = None
    """Batch-1 p99."""
    benchmark: Benchmark | None = None
    outcome: str = ""
    """``selected``, or why it lost."""


class TensorInfo(Record):
    name: str
    dtype: str
    shape: list[int | str]
    profile: dict[str, list[int]] | None = None


class CanarySample(Record):
    """Inputs recorded at build time with the engine's own outputs on its build host: a serving host's preflight
    canary runs the engine on them and refuses it unless every output is within ``atol + rtol * |expected|``."""

    file: str
    rows: int
    atol: float
    rtol: float


CANARY_FILE = "canary.npz"
CANARY_ROWS = 1024
"""Windows drawn uniformly from the test split into the canary's recorded sample: an engine failing on a share
``p`` of inputs slips past with probability at most ``(1 - p) ** CANARY_ROWS``, 0.59 % for p = 0.5 %
(n >= ln 0.01 / ln 0.995 = 919 for 1 %)."""
CANARY_TAIL_ROWS = 256
"""Tail windows (the gates' :func:`pipelines.gates.tail_mask`) added on top, so rare inputs are represented."""


class Manifest(Record):
    """Everything needed to trust, run or rebuild one engine."""

    family: str
    version: str
    target: str
    compute_capability: str | None
    backend: str
    backend_version: str
    precision: str
    engine_file: str
    onnx_file: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    sha256: dict[str, str | None]
    """``engine``, ``onnx`` (the variant built from) and ``calibration`` (INT8 only)."""
    build: dict[str, JsonValue]
    """``seconds``, ``started_at``, ``command``, backend ``options``, ``hardware_compatibility``."""
    host: dict[str, JsonValue]
    """Build host: hostname, CPU, GPU name, driver."""
    versions: dict[str, str]
    files: dict[str, str] = {}
    """sha256 of every file of the engine directory but the manifest itself: nothing unlisted is trusted."""
    canary: CanarySample | None = None
    """The recorded sample a serving host's preflight canary checks the engine against (None: older engines)."""


IDENTITY_KEYS = ("family", "target", "compute_capability", "backend", "backend_version", "precision", "engine_file",
                 "onnx_file", "inputs", "outputs", "sha256")


def engine_identity(manifest: Manifest | dict[str, Any]) -> str:
    """The content identity of an engine: a sha256 over what it computes and is built from, never over when or
    where it was built (``build`` and ``host`` are left out). A rebuilt engine with the same bytes has the same
    identity; the store and the registry recognise a version by it."""
    import hashlib
    import json

    if isinstance(manifest, Manifest):
        manifest = manifest.model_dump(mode="json")
    body = {k: manifest.get(k) for k in IDENTITY_KEYS}
    body["hardware_compatibility"] = (manifest.get("build") or {}).get("hardware_compatibility")
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def parse_manifest(text: str | bytes, where: str) -> Manifest:
    """The one reader of a manifest's bytes: a :class:`Manifest`, or :class:`~factory_core.errors.ManifestError`
    in one line naming ``where`` and what is wrong. The engine builder's check, the store and the serving canary
    all read through here, so a malformed manifest is the same error wherever it is met."""
    import json

    from pydantic import ValidationError

    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{where}: malformed {MANIFEST}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: malformed {MANIFEST}: expected an object, got {type(raw).__name__}")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        what = "missing" if err["type"] == "missing" else err["msg"].lower()
        raise ManifestError(f"{where}: malformed {MANIFEST}: key {key!r} {what}") from None
    for key in ("engine", "onnx"):
        if not isinstance(manifest.sha256.get(key), str):
            raise ManifestError(f"{where}: malformed {MANIFEST}: sha256.{key} missing")
    return manifest


def read_manifest(folder: Path, where: str | None = None) -> Manifest:
    """``folder/manifest.json`` through :func:`parse_manifest`; a missing or symlinked one is a
    :class:`~factory_core.errors.ManifestError` too (``where`` defaults to the folder)."""
    path = Path(folder) / MANIFEST
    where = where or str(folder)
    if path.is_symlink():
        raise ManifestError(f"{where}: {MANIFEST} is a symlink (refused)")
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{where}: no {MANIFEST}") from None
    except IsADirectoryError:
        raise ManifestError(f"{where}: {MANIFEST} is not a file") from None
    return parse_manifest(text, where)


def hash_mismatch(folder: Path, manifest: Manifest) -> str | None:
    """What is wrong with the files in ``folder`` against ``manifest``'s sha256s; None if nothing.

    Checks the engine and the ONNX, and every file the manifest lists in ``files``; a symlink is refused.
    """
    listed = dict(manifest.files)
    listed[manifest.engine_file] = manifest.sha256["engine"]
    listed[manifest.onnx_file] = manifest.sha256["onnx"]
    for name, digest in sorted(listed.items()):
        f = Path(folder) / name
        if f.is_symlink():
            return f"{name} is a symlink (refused: only regular files listed with their sha256 are trusted)"
        if not f.is_file():
            return f"{name} listed in the manifest is missing"
        if sha256_file(f) != digest:
            return f"sha256 of {name} does not match the manifest"
    return None


class AccuracyReport(Record):
    """Accuracy verdicts of one family's variants against the FP32 PyTorch reference (test split)."""

    family: str
    reference: dict[str, float]
    verdicts: list[Verdict]
    """One per precision."""
    reference_uri: str
    """FP32 PyTorch outputs on the test split (``.npy``): what engines are scored against on their workers."""
    splits_uri: str


class Champion(Record):
    """The registry's champion for one (family, target) as a gate saw it: comparable on this host or why not,
    and its figures measured beside the candidates in this run."""

    family: str
    target: str
    comparable: bool = False
    reason: str = ""
    """Why it was not measured: no champion yet, its copy is unusable, another input shape…"""
    registry_version: str | None = None
    version: str | None = None
    precision: str | None = None
    date: str | None = None
    engine_dir: str = ""
    """Its verified local copy on the gate's worker (a cache, not an artifact of the run)."""
    p99_ms: float | None = None
    benchmark: Benchmark | None = None
    """Its interleaved benchmark this run, beside the candidates."""


class TargetGate(Record):
    """Parity + latency of one family's engines on one target, champion comparison, and the selection."""

    family: str
    target: str
    status: Status
    """``ok`` when a candidate was selected, ``rejected`` when none passed, ``skipped`` when none was built."""
    reason: str = ""
    candidates: list[Candidate] = []
    selected: str | None = None
    champion: Champion | None = None
    """The champion before this run and its figures measured in this run."""

    @property
    def winner(self) -> Candidate | None:
        return next((c for c in self.candidates if c.precision == self.selected), None) if self.selected else None


class GateReport(Record):
    """The night's gate report: every accuracy verdict and every target's gate."""

    date: str
    profile: str
    accuracy: list[AccuracyReport]
    targets: list[TargetGate]


class Registered(Record):
    """One (family, target) engine version registered this night, or the earlier one kept and why."""

    target: str
    registry_version: str
    store_uri: str
    precision: str | None = None
    promoted: bool = False
    note: str = ""


class PublishResult(Record):
    """A family's MLflow run and the engine versions registered (and pushed) this night."""

    family: str
    run_id: str
    versions: list[Registered]

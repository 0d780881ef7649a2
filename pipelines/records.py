"""Small frozen records passed between stages (and between Airflow tasks as XCom JSON).

Big things travel as URIs; these records only say where they are and how they went.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict


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
    run_dir: str
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


class EngineResult(Record):
    """One (family, precision, target) build: ``ok`` with its manifest, or ``skipped`` with the reason."""

    family: str
    precision: str
    target: str
    backend: str
    status: Status
    reason: str = ""
    engine_dir: str = ""
    engine_sha256: str = ""
    backend_version: str = ""
    seconds: float = 0.0
    required: bool = False


class AccuracyReport(Record):
    """Accuracy verdicts of one family's variants against the FP32 PyTorch reference (test split)."""

    family: str
    reference: dict[str, float]
    verdicts: list[Any]
    reference_uri: str = ""
    """FP32 PyTorch outputs on the test split (``.npy``): what engines are scored against on their workers."""
    """:class:`pipelines.gates.Verdict` as dicts, one per precision."""


class TargetGate(Record):
    """Parity + latency of one family's engines on one target, champion comparison, and the selection."""

    family: str
    target: str
    status: Status
    """``ok`` when a candidate was selected, ``rejected`` when none passed, ``skipped`` when none was built."""
    reason: str = ""
    candidates: list[Any] = []
    """:class:`pipelines.gates.Candidate` as dicts."""
    selected: str | None = None
    champion: dict[str, Any] | None = None
    """The champion before this run and its figures measured in this run."""


class PublishResult(Record):
    """A family's MLflow run and the engine versions registered (and pushed) this night."""

    family: str
    run_id: str
    versions: list[dict[str, Any]]

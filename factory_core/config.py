"""The factory's one typed configuration, validated where it enters.

Layering, lowest first: the defaults in these models (stated once, here) → a YAML
file (``--config``, ``$FACTORY_CONFIG`` or ``./factory.yaml``) → a named profile
overlay (``smoke`` or ``default``) → environment overrides.

Environment overrides: ``FACTORY_HOME`` sets ``home``; ``FACTORY_PROFILE`` picks the profile
when none is passed (the CLI sets it so a DAG parsed in its process sees the run's targets); any ``FACTORY__A__B=value``
sets ``a.b`` (value parsed as YAML, so ``FACTORY__TRAIN__MAX_EPOCHS=3`` is an int).
An unknown key or a bad value raises :class:`ConfigError` naming the key.

YAML (the file and every override value) is read by one loader, :func:`_load_yaml`, that refuses what a config
never holds: a file over 1 MiB, bytes that are not UTF-8, a duplicate key, nesting past 32 levels, and a
document that expands past 100,000 nodes once its aliases are expanded (an alias bomb). Every URI-valued key
(:data:`Uri`) refuses credentials in the URI. Errors echo at most 200 characters of a value, redacted.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
import reprlib
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import urlsplit

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from .errors import BadInput
from .families import SPECS, Family, FamilySpec
from .layout import RunLayout
from .precisions import PRECISIONS, QUANTIZED, REFERENCE, PrecisionName, QuantizedName

ENV_PREFIX = "FACTORY__"
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@']+@")


def redact(text: str) -> str:
    """``scheme://user:secret@host`` → ``scheme://***@host`` wherever a URI appears in ``text``."""
    return _USERINFO.sub(r"\1***@", text)


class ConfigError(BadInput, ValueError):
    """A configuration key or value is wrong; the message names it."""


_CREDENTIALS_BELONG = {
    "tracking_uri": "use MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the "
                    "environment instead",
    "pushgateway_url": "the factory pushes without credentials; reach the Pushgateway over a private network instead",
}
_AWS_CHAIN = ("S3 credentials come from the AWS credential chain instead (AWS_ACCESS_KEY_ID and "
              "AWS_SECRET_ACCESS_KEY in the environment, AWS_PROFILE, or the host's role)")


def _refuse_credentials(value: str, info: ValidationInfo) -> str:
    """Every URI-valued key: ``scheme://user:secret@host`` is refused, since config values are printed in the
    console, task logs, plans and failure records. The message says where the key's credentials belong."""
    if "://" in value:
        parts = urlsplit(value)
        if parts.username or parts.password:
            raise ValueError("credentials in a URI would reach every log line that prints it; "
                             + _CREDENTIALS_BELONG.get(info.field_name or "", _AWS_CHAIN))
    return value


Uri = Annotated[str, AfterValidator(_refuse_credentials)]
"""A path or URI in the config (lake, run root, stores, endpoints): never with credentials in it."""


class _Strict(BaseModel):
    # Inputs stay out of pydantic's own message: _format_error echoes them bounded and redacted.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class DataConfig(_Strict):
    source: Literal["simulator", "lake"] = "simulator"
    """``simulator`` writes missing days into the lake; ``lake`` only reads what is there."""
    lake_uri: Uri | None = None
    """Local path or ``s3://bucket/prefix``; defaults to ``<home>/lake``."""
    symbols: list[str] = Field(default_factory=lambda: ["ESZ6", "NQZ6", "AAPL", "MSFT"], min_length=1)
    ticks_per_day: int = Field(20_000, ge=500)
    transactions_per_day: int = Field(10_000, ge=500)
    """Payments a simulated day holds (the Fraud-Detection Handbook's generator: about 10k a day)."""
    history_days: int = Field(2, ge=1, le=60)
    """Market lake days used for training, ending the day before the logical date (the market families)."""
    transactions_history_days: int = Field(21, ge=10, le=120)
    """Payment days that are model rows, after the fraud features' 30-day warm-up and ending the day before the
    logical date; the newest ``label_delay_days`` of them are not yet labelled (drift only, never trained on)."""
    seed: int = 7


class FeatureConfig(_Strict):
    horizon_ms: int = Field(100, gt=0)
    """price_direction label horizon: is the mid higher ``horizon_ms`` later."""
    alert_horizon_ticks: int = Field(20, gt=0)
    """market_alert label horizon: an abnormal move within the next N ticks."""
    alert_sigma: float = Field(4.5, gt=0)
    """A tick return beyond this many trailing sigmas is an abnormal move."""
    alert_volume_ratio: float = Field(6.0, gt=1)
    """Tick volume beyond this multiple of the trailing mean is an abnormal move."""
    vol_window: int = Field(50, ge=5)
    ema_fast: int = Field(10, ge=2)
    ema_slow: int = Field(50, ge=3)
    vwap_window: int = Field(100, ge=5)
    return_horizons: list[int] = Field(default_factory=lambda: [1, 5, 20, 50])


class FamilyConfig(_Strict):
    enabled: bool = True
    window: int = Field(64, ge=1)
    """Sequence length in ticks (1 for tabular families)."""
    stride: int = Field(4, ge=1)
    """Step between consecutive training windows."""
    hidden: int = Field(64, ge=4)
    layers: int = Field(1, ge=1, le=6)
    threshold: float = Field(0.5, gt=0, lt=1)
    """Decision threshold for precision/recall (market_alert alerts above 0.9)."""
    opt_batch: int = Field(32, ge=1)
    """Engine optimization-profile batch TensorRT tunes for (min is 1)."""
    max_batch: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _batch_order(self) -> "FamilyConfig":
        if self.opt_batch > self.max_batch:
            raise ValueError(f"opt_batch {self.opt_batch} exceeds max_batch {self.max_batch}")
        return self


def _spec_sizes(s: FamilySpec) -> dict[str, Any]:
    return {"window": s.window, "stride": s.stride, "hidden": s.hidden, "layers": s.layers, "threshold": s.threshold}


def _default_families() -> dict[Family, FamilyConfig]:
    """Every registered family's sizes and threshold, from its spec."""
    return {s.family: FamilyConfig(**_spec_sizes(s)) for s in SPECS.values()}


class TrainConfig(_Strict):
    seed: int = 1234
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_epochs: int = Field(10, ge=1)
    patience: int = Field(3, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    max_train_samples: int = Field(30_000, ge=100)
    """Cap on training windows per family, so a night fits its slot."""
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    threads: int = Field(0, ge=0)
    """torch intra-op threads on CPU; 0 leaves torch's default."""
    queue: str = "default"
    """Airflow queue of the ``train`` tasks: ``train`` in a fleet, where the trainer host (CUDA + AMP when it has a
    GPU) is the only worker on it. Part of the DAG's shape, read from the config file at parse."""

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(p <= 0 for p in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"train/val/test fractions must be positive and sum to 1, got {v}")
        return v


class ExportConfig(_Strict):
    opset: int = Field(18, ge=17)
    """18 is the torch dynamo exporter's native opset; 17 is converted down."""
    parity_atol: float = Field(PRECISIONS[REFERENCE].parity[0], gt=0)
    parity_rtol: float = Field(PRECISIONS[REFERENCE].parity[1], gt=0)
    parity_samples: int = Field(256, ge=8)


class QuantizeConfig(_Strict):
    precisions: list[QuantizedName] = Field(default_factory=lambda: list(QUANTIZED))
    calibration_method: Literal["entropy", "max"] = "entropy"
    calibration_size: int = Field(1000, ge=16)


AUTO = "auto"
"""A target name that the building worker resolves to its own ``sm_XY`` (``engines.targets: auto``)."""
_TARGET_NAME = re.compile(r"^(cpu(?:_[a-z0-9]+)?|sm_(\d)(\d+))$")
COMPUTE_CAPABILITIES = ("sm_70", "sm_72", "sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_100", "sm_101",
                        "sm_103", "sm_110", "sm_120", "sm_121")
"""NVIDIA compute capabilities a GPU target may name (Volta to Blackwell); ``sm_9x`` or ``sm_999`` is a typo."""


class TargetConfig(_Strict):
    """One build target: ``cpu`` (ONNX Runtime) or a GPU architecture ``sm_XY`` (TensorRT)."""

    name: str
    backend: Literal["tensorrt", "onnxruntime"] | None = None
    """Defaults from the name: ``cpu`` → onnxruntime, ``sm_XY`` → tensorrt."""
    queue: str | None = None
    """Airflow queue of this target's tasks (Celery/Edge workers); default ``default`` / ``gpu_<name>``."""
    pool: str | None = None
    """Airflow pool of this target's tasks; default ``engines_<name>``. Pools and their slots are declared once, in
    ``infra/airflow/pools.json`` (``$FACTORY_POOLS``), and created by ``factory airflow init``; one slot on a GPU
    keeps timings clean."""
    required: bool = False
    """A required target that cannot build fails the night; others record ``skipped``."""
    hardware_compatibility: Literal["none", "ampere_plus", "same_compute_capability"] = "none"
    """TensorRT hardware-compatibility level: ``ampere_plus`` engines build and run on any sm_80+ GPU."""
    precisions: list[PrecisionName] = Field(default_factory=lambda: list(PRECISIONS), min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_name(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"name": data}
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return data
        name = data["name"]
        if name == AUTO:  # this worker's own architecture, resolved where the build runs
            data = {"queue": "default", **data}
        elif not _TARGET_NAME.match(name) or (not is_cpu_target(name) and name not in COMPUTE_CAPABILITIES):
            raise ValueError(f"target name {name!r}: expected 'cpu', a CPU class 'cpu_<class>' or a real compute "
                             f"capability ({', '.join(COMPUTE_CAPABILITIES)})")
        data = dict(data)
        gpu = not is_cpu_target(name)
        data.setdefault("backend", "tensorrt" if gpu else "onnxruntime")
        data.setdefault("queue", f"gpu_{name}" if gpu else "default")
        data.setdefault("pool", f"engines_{name}")
        if data["backend"] == "tensorrt" and not gpu:
            raise ValueError("target cpu cannot use backend tensorrt")
        if data["backend"] == "onnxruntime" and gpu:
            raise ValueError(f"target {name}: backend onnxruntime is the cpu target's; use tensorrt")
        return data

    @property
    def compute_capability(self) -> tuple[int, int] | None:
        """(major, minor) for ``sm_XY``: ``sm_86`` → (8, 6), ``sm_100`` → (10, 0)."""
        m = _TARGET_NAME.match(self.name)
        if is_cpu_target(self.name) or m is None:
            return None
        digits = m.group(2) + m.group(3)
        return int(digits[:-1]), int(digits[-1])


def is_cpu_target(name: str) -> bool:
    """``cpu``, or a CPU class ``cpu_<class>`` (e.g. ``cpu_icelake``: one serving CPU fleet, built and timed on a
    worker of that class, on the default queue unless ``queue`` says otherwise)."""
    return name == "cpu" or name.startswith("cpu_")


def _default_targets() -> list[TargetConfig]:
    return [TargetConfig(name="cpu", required=True)] + [TargetConfig(name=f"sm_{cc}") for cc in (80, 86, 89, 90, 100)]


class TensorRTConfig(_Strict):
    workspace_mib: int = Field(1024, ge=16)
    """Builder workspace memory-pool limit."""
    builder_optimization_level: int = Field(3, ge=0, le=5)
    build_timeout_s: int = Field(1800, ge=10)


class OnnxRuntimeConfig(_Strict):
    graph_optimization_level: Literal["basic", "extended", "all"] = "extended"
    """``extended`` keeps the saved model portable across CPUs; ``all`` adds layout ops for the build host."""
    intra_op_threads: int = Field(1, ge=1)
    """Threads per session: 1 serves one request per core with the steadiest p99."""
    build_timeout_s: int = Field(600, ge=10)


class EngineConfig(_Strict):
    targets: Literal["auto"] | list[TargetConfig] = Field(default_factory=_default_targets)
    """``auto``: ``cpu`` plus this host's ``sm_XY`` when CUDA and TensorRT are both here."""
    tensorrt: TensorRTConfig = TensorRTConfig()
    onnxruntime: OnnxRuntimeConfig = OnnxRuntimeConfig()
    worker_wait_s: float = Field(600.0, ge=0)
    """Under the CeleryExecutor, how long a night waits for a live worker on a target's queue (other than
    ``default``) before the target records ``skipped`` ("no worker on queue gpu_sm_XY"), or fails the night when
    ``required``. A queued task with no worker would otherwise wait for good."""

    @field_validator("targets")
    @classmethod
    def _unique(cls, v: Any) -> Any:
        if isinstance(v, list):
            names = [t.name for t in v]
            if len(set(names)) != len(names):
                raise ValueError(f"duplicate target names in {names}")
            if not v:
                raise ValueError("at least one target is needed (or 'auto')")
        return v


class AgreementBounds(_Strict):
    """How far a candidate's P(positive) may be from the FP32 PyTorch model's on the same test windows.

    Derived per family and precision from healthy variants measured across seeds (benchmarks/gate_reliability.py
    --derive; docs/gates.md): the family's largest healthy value over seeds, times a safety factor.
    """

    mean_abs: float = Field(gt=0)
    p99_abs: float = Field(gt=0)
    max_abs: float = Field(gt=0)
    bias: float = Field(gt=0)
    """|mean(candidate − reference)|: a calibration shift (a constant offset moves nothing else)."""
    flip_rate: float = Field(ge=0)
    """Share of decisions at the family threshold that differ from the reference's."""
    tail_mean_abs: float = Field(gt=0)
    tail_bias: float = Field(gt=0)


class FamilyGates(_Strict):
    """Margins for one family's candidates against the FP32 PyTorch reference on the test split.

    Each margin is a degradation that rejects only when the paired bootstrap shows it: the lower end
    of the interval (``gates.confidence``) of reference − candidate lies beyond the margin. A point
    estimate past the margin with an interval that reaches back inside it is reported, not rejected.
    """

    auc_drop_max: float = Field(0.005, ge=0)
    """The seeds' rule: AUC drop < 0.5 % (absolute 0.005)."""
    accuracy_drop_max: float = Field(0.005, ge=0)
    precision_drop_max: float | None = Field(None, ge=0)
    """At the family threshold (market_alert: 0.9)."""
    recall_drop_max: float | None = Field(None, ge=0)
    sharpe_rel_tol: float | None = Field(None, ge=0)
    """price_direction: backtest Sharpe may fall by at most this fraction of FP32's."""
    tail_brier_increase_max: float = Field(0.01, ge=0)
    """On the extreme-move subset, Brier score may worsen by at most this much."""
    champion_auc_margin: float = Field(0.01, ge=0)
    """Non-inferiority margin of a challenger against the champion (champion AUC − challenger AUC), paired
    on today's test window: non-inferior when the whole interval lies below it, worse when all of it lies above."""
    p99_budget_ms: dict[Literal["cpu", "gpu"], float] = Field(default_factory=lambda: {"cpu": 20.0, "gpu": 20.0})
    """Batch-1 p99 latency budget per target class."""
    agreement: dict[PrecisionName, AgreementBounds]
    """Variant and engine outputs against FP32 PyTorch, per precision (gating)."""

    @field_validator("agreement")
    @classmethod
    def _every_precision(cls, v: dict[str, AgreementBounds]) -> dict[str, AgreementBounds]:
        if missing := [p for p in PRECISIONS if p not in v]:
            raise ValueError(f"no agreement bounds for {', '.join(missing)}")
        return v


def _spec_gates(s: FamilySpec) -> dict[str, Any]:
    return {**s.gate_margins, "agreement": s.agreement}


def _default_family_gates() -> dict[Family, FamilyGates]:
    """Every registered family's margins and agreement bounds, from its spec."""
    return {s.family: FamilyGates(**_spec_gates(s)) for s in SPECS.values()}


class ChampionPolicy(_Strict):
    undecided: Literal["promote", "keep_champion"] = "keep_champion"
    """When today's window cannot decide champion vs challenger (too few positives, or an interval that
    straddles the margin): ``keep_champion`` (default: the challenger is registered with alias ``challenger`` and
    the champion stays, so every alias move rests on evidence) or ``promote`` (fresher data wins unless it is
    shown worse). Either way a challenger without demonstrated skill (``skill`` check) is never promoted, and one
    shown worse is rejected. Chosen on docs/gates.md's replay of the undecided nights."""
    refresh_after_days: int | None = Field(7, ge=1)
    """Under ``keep_champion``: a champion trained on a night this many days or more before tonight gives way to a
    skilled challenger that today's window cannot decide against, so a champion cannot age without bound when the
    windows are too small to show non-inferiority. None: never (only a non-inferior challenger replaces it)."""


class GateConfig(_Strict):
    families: dict[Family, FamilyGates] = Field(default_factory=_default_family_gates)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    """Two-sided level of every interval a gate decides on (paired bootstrap; t over latency rounds)."""
    bootstrap_resamples: int = Field(1000, ge=100)
    min_events: int = Field(20, ge=1)
    """A metric built on events (positives, alerts, trades, tail windows) with fewer than this many in
    either model's sample cannot decide: the check says ``undecided`` and names the counts."""
    parity: dict[PrecisionName, tuple[float, float]] = Field(
        default_factory=lambda: {n: p.parity for n, p in PRECISIONS.items()})
    """Engine vs its own ONNX variant: (atol, rtol) per precision. A diagnostic: engines are gated on their
    agreement with FP32 PyTorch; only NaN/inf here rejects."""
    parity_samples: int = Field(512, ge=8)
    latency_regression_max: float = Field(0.10, ge=0)
    """p50 or p99 may exceed the champion's (same target, interleaved rounds, one task) by at most this fraction;
    a regression rejects when the lower end of the ratio's interval over the rounds is beyond it..."""
    latency_noise_floor_ms: float = Field(0.05, ge=0)
    """...and the pooled difference also exceeds this many ms (sub-0.1 ms CPU latencies)."""
    tie_tolerance: float = Field(0.03, ge=0)
    """p99s within this fraction are a tie; the higher precision wins a tie."""
    champion: ChampionPolicy = ChampionPolicy()
    auto_promote: bool = True
    """A selection that passed every gate becomes the target's champion without a person."""
    agreement: None = Field(None, exclude=True)
    """Retired: agreement bounds are per family, ``gates.families.<family>.agreement.<precision>``."""

    @field_validator("agreement", mode="before")
    @classmethod
    def _agreement_moved(cls, v: Any) -> None:
        raise ValueError("agreement bounds are per family now: set gates.families.<family>.agreement.<precision> "
                         "(e.g. gates.families.market_alert.agreement.int8.mean_abs) instead of "
                         "gates.agreement.<precision>")


class BacktestConfig(_Strict):
    """Costs of the price_direction backtest reported net beside the gross one (``pipelines.evaluate.net_backtest``)."""

    fee_bps: float = Field(0.1, ge=0)
    """Per-trade fee each way, in basis points of notional (exchange and clearing fees: about 0.05-0.3 bp for
    liquid futures and large-cap equities)."""
    half_spread_bps: float | None = Field(None, ge=0)
    """A fixed half-spread paid each way; None pays half the spread quoted at each window's last tick."""


class BenchmarkConfig(_Strict):
    warmup: int = Field(50, ge=0)
    iters: int = Field(1000, ge=20)
    """Timed iterations per (engine, batch): 1000 puts 10 samples above the p99."""
    max_seconds: float = Field(5.0, gt=0)
    """Cap per (engine, batch); fewer iterations are recorded when it is hit."""
    cuda_graphs: bool = True
    rounds: int = Field(7, ge=2)
    """The champion and the candidates are timed interleaved in this many rounds (random order each round);
    ``iters`` and ``max_seconds`` are split across them. Decisions use intervals over the rounds."""


class RegistryConfig(_Strict):
    tracking_uri: Uri | None = None
    """MLflow tracking/registry URI; default ``sqlite:///<home>/mlflow/mlflow.db`` (embedded)."""
    experiment: str = "model-factory"
    store_uri: Uri | None = None
    """Engine store: a path or ``s3://bucket/prefix``; default ``<home>/engine_store``."""
    s3_endpoint_url: Uri | None = None
    """For MinIO or another S3-compatible endpoint; AWS when unset. Credentials: the AWS chain, never config."""
    http_timeout_s: float = Field(10.0, gt=0)
    """MLflow client: seconds per HTTP attempt (``MLFLOW_HTTP_REQUEST_TIMEOUT``)."""
    http_max_retries: int = Field(2, ge=0)
    """MLflow client: retries per request (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``; MLflow's own default is 7 with a
    2 s backoff factor, minutes per call). Airflow's task retries multiply this bounded figure."""
    http_backoff_s: int = Field(1, ge=0)
    """MLflow client: backoff factor between retries (1, 2, 4 … s; MLflow takes an integer)."""
    preflight_timeout_s: float = Field(5.0, gt=0)
    """The night's first task reaches every service within this many seconds, or fails naming it."""
    webhook_secret_file: Path | None = None
    """A serving host that follows alias moves by MLflow webhook (``factory-serve pull --watch --webhook``): the file
    holding the webhook's secret (a mounted secret; the secret itself is never in the config)."""
    webhook_max_age_s: float = Field(300.0, gt=0)
    """A webhook delivery signed further than this from the host's clock is refused as a replay."""


def _spec_drift_shares() -> dict[Family, float]:
    return {s.family: s.drift_share for s in SPECS.values() if s.drift_share is not None}


DISTANCE_STATTESTS = frozenset({"psi", "wasserstein", "jensenshannon", "hellinger", "kl_div", "energy_distance"})
"""Evidently stattests whose score is a distance (larger is more drift), as opposed to a p-value."""


class DriftConfig(_Strict):
    schedule: str = "@hourly"
    """Cron or preset of the ``drift_monitor`` DAG."""
    window_hours: float = Field(1.0, gt=0)
    """A check compares the prediction log of the last ``window_hours`` with the champion's reference."""
    min_rows: int = Field(200, ge=30)
    """Fewer logged rows than this: the check says ``insufficient`` and never triggers."""
    reference_rows: int = Field(5000, ge=200)
    """Rows of the test split kept as the reference window at registration."""
    drift_share: float = Field(0.5, gt=0, le=1)
    """Dataset drift: at least this share of feature columns drifted (Evidently's ``DriftedColumnsCount``)."""
    family_drift_share: dict[Family, float] = Field(default_factory=_spec_drift_shares)
    """Per-family ``drift_share``; defaults: the family specs' ``drift_share`` (fraud_risk 0.2, and why, there)."""
    clean_checks_to_close: int = Field(3, ge=1)
    """Hysteresis: an open drift episode closes only after this many clean checks in a row..."""
    close_share_ratio: float = Field(0.5, gt=0, le=1)
    """...or at once when a clean check's drift share is below this fraction of the family's share
    (0.5 x 0.5 = 0.25 by default): a share hovering at the threshold keeps one episode, not many."""
    method: str | None = "psi"
    """Per-column stattest (an Evidently name: ``psi``, ``wasserstein``, ``ks``, ``jensenshannon``…); None lets
    Evidently choose by sample size (K-S below 1000 rows, which flags nearly everything on large windows)."""
    threshold: float | None = 0.2
    """Per-column threshold: PSI > 0.2 is the usual "significant shift"."""
    severe_score: float | None = Field(10.0, gt=0)
    """One feature column whose score reaches this is drift on its own, whatever the share: a shock to one input
    (book depth at a third of normal scores PSI about 14) is one column of many and never reaches a share. Only
    for the distance stattests (``psi``, ``wasserstein``, ``jensenshannon``: a larger score is more drift); None
    turns it off. 10.0: the largest column PSI of 10 ordinary days was 5.42, the smallest worst column of 3
    shifted days 13.62: what a column wholly outside its reference range scores (docs/monitoring.md, "Severity")."""
    prediction_drift: bool = False
    """Also trigger when the prediction column alone drifted. Off by default: it is always measured and
    exported, but market_alert's score follows the day's spread and volatility level and alone alarms on
    ordinary days (docs/monitoring.md)."""
    targets: list[str] = Field(default_factory=lambda: ["cpu"], min_length=1)
    """Serving targets whose prediction logs are checked."""
    ignore_columns: list[str] = Field(default_factory=lambda: ["weekend", "night"])
    """Not compared: calendar features, whose hourly window always differs from a day-long reference."""

    @model_validator(mode="after")
    def _severe_needs_a_distance(self) -> "DriftConfig":
        if self.severe_score is not None and self.method not in DISTANCE_STATTESTS:
            raise ValueError(f"severe_score needs a distance stattest ({', '.join(sorted(DISTANCE_STATTESTS))}), "
                             f"whose score grows with drift; method is {self.method!r} (set severe_score: null)")
        return self

    def share_for(self, family: str) -> float:
        """The family's dataset-drift share: ``family_drift_share`` or ``drift_share``."""
        return self.family_drift_share.get(Family(family), self.drift_share)

    def close_below_share_for(self, family: str) -> float:
        """The lower share under which a clean check closes an open episode at once."""
        return self.share_for(family) * self.close_share_ratio


class MonitoringConfig(_Strict):
    drift: DriftConfig = Field(default_factory=DriftConfig)
    prediction_log_uri: Uri | None = None
    """Where serving hosts log predictions: a path or ``s3://bucket/prefix``; default: the engine store."""
    textfile_dir: str | None = None
    """node_exporter textfile-collector directory for batch metrics (drift, nightly outcome);
    default ``<home>/metrics``."""
    pushgateway_url: Uri | None = None
    """Also push batch metrics to this Prometheus Pushgateway when set."""


class RunsConfig(_Strict):
    root: Uri | None = None
    """Where every night's artifacts live: a path, or ``s3://bucket/prefix`` (AWS or MinIO) in a fleet, where no
    task can read another host's disk. Default ``<home>/runs``."""
    isolate_tasks: bool = False
    """Run every task in a fresh, empty ``home`` that is deleted afterwards: proves that no task depends on a file
    another task left on local disk (tests and audits; a fleet has this by construction)."""
    task_retries: int = Field(2, ge=0)
    """Retries of each nightly task for a cause that may pass (an unreachable service, a held lock, a bug's flake);
    bad input and bad config fail at once whatever this says (``factory_core.errors``). Read where the DAG is
    parsed."""
    retry_delay_s: float = Field(120.0, gt=0)
    """The first wait before a nightly task's retry; it doubles at each further try (Airflow's exponential
    backoff, with its jitter of up to as much again)."""


class FactoryConfig(_Strict):
    home: Path = Path(".factory")
    """Local state of this host: scratch, caches, the embedded lake, store and MLflow database."""
    profile: Literal["smoke", "default"] = "default"
    data: DataConfig = DataConfig()
    features: FeatureConfig = FeatureConfig()
    families: dict[Family, FamilyConfig] = Field(default_factory=_default_families)
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    engines: EngineConfig = EngineConfig()
    gates: GateConfig = Field(default_factory=GateConfig)
    benchmark: BenchmarkConfig = BenchmarkConfig()
    backtest: BacktestConfig = BacktestConfig()
    registry: RegistryConfig = RegistryConfig()
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    runs: RunsConfig = RunsConfig()

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @model_validator(mode="after")
    def _check_families(self) -> "FactoryConfig":
        for key, configured in (("families", self.families), ("gates.families", self.gates.families)):
            if missing := [f for f in SPECS if f not in configured]:
                raise ValueError(f"{key}: no entry for {', '.join(missing)} (a family with a spec needs one)")
        for fam, fc in self.families.items():
            lo, hi = SPECS[fam].window_range
            if not lo <= fc.window <= hi:
                allowed = f"fixed at {lo}" if lo == hi else f"{lo}..{hi}"
                raise ValueError(f"families.{fam}.window must be {allowed} ticks, got {fc.window}")
        return self

    @property
    def lake_uri(self) -> str:
        return self.data.lake_uri or str(self.home / "lake")

    @property
    def enabled_families(self) -> list[Family]:
        return [f for f in Family if f in self.families and self.families[f].enabled]

    @property
    def runs_root(self) -> str:
        return self.runs.root or str(self.home / "runs")

    def run_layout(self, date: str) -> RunLayout:
        return RunLayout.of(self.runs_root, date)

    @property
    def scratch(self) -> Path:
        """Local working folder of this host's tasks; nothing in it outlives the task that wrote it."""
        return self.home / "scratch"

    @property
    def engine_store(self) -> Path:
        """Local engine store (timing caches live here too)."""
        return self.home / "engine_store"

    @property
    def store_uri(self) -> str:
        return self.registry.store_uri or str(self.engine_store)

    @property
    def prediction_log_uri(self) -> str:
        return self.monitoring.prediction_log_uri or self.store_uri

    @property
    def textfile_dir(self) -> Path:
        return Path(self.monitoring.textfile_dir) if self.monitoring.textfile_dir else self.home / "metrics"

    @property
    def tracking_uri(self) -> str:
        return self.registry.tracking_uri or f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    def declared_targets(self) -> list[TargetConfig]:
        """The target matrix as the config file states it: the DAG's shape. Probes nothing.

        ``engines.targets: auto`` declares ``cpu`` and one ``auto`` target that each worker resolves to its own
        architecture when it runs (:meth:`resolve_target`), never where the DAG file is parsed.
        """
        if self.engines.targets == AUTO:
            return [TargetConfig(name="cpu", required=True), TargetConfig(name=AUTO)]
        return list(self.engines.targets)

    def declared_target(self, name: str) -> TargetConfig:
        """The declared target called ``name``; :class:`ConfigError` naming the declared ones otherwise."""
        targets = self.declared_targets()
        for t in targets:
            if t.name == name:
                return t
        raise ConfigError(f"engines.targets: unknown target {name!r}; configured: {[t.name for t in targets]}")

    def resolve_target(self, name: str) -> tuple[TargetConfig | None, str]:
        """The target to build on this worker: ``auto`` becomes this host's ``sm_XY``, probed now.

        Returns ``(None, reason)`` when ``auto`` finds no GPU with TensorRT here.
        """
        declared = self.declared_target(name)
        if name != AUTO:
            return declared, ""
        from .availability import local_target

        probe = local_target()
        if not probe:
            return None, f"targets: auto: {probe.reason}"
        return declared.model_copy(update={"name": probe.value}), ""

# Profile overlays. ``default`` is the model defaults above; ``smoke`` shrinks a night
# to a test-sized one while keeping every stage real (each family's sizes: its spec's ``smoke``, see profile_overlay).
PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "smoke": {
        "data": {"symbols": ["ESZ6", "NQZ6"], "ticks_per_day": 6000, "transactions_per_day": 3000,
                 "history_days": 1},
        "train": {"max_epochs": 8, "patience": 3, "max_train_samples": 6000, "batch_size": 64, "lr": 3e-3},
        "export": {"parity_samples": 64},
        "quantize": {"calibration_size": 256},
        "benchmark": {"warmup": 20, "iters": 1400, "max_seconds": 2.0},
    },
}


def profile_overlay(name: str) -> dict[str, Any]:
    """What profile ``name`` layers over the file: :data:`PROFILES`, and under ``smoke`` each family's spec sizes."""
    if name not in PROFILES:
        raise ConfigError(f"profile: unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    if name != "smoke":
        return PROFILES[name]
    return _deep_merge(PROFILES[name], {"families": {s.family.value: dict(s.smoke) for s in SPECS.values()
                                                     if s.smoke}})


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


MAX_CONFIG_BYTES = 1 << 20
"""A config file is a few KB; one over 1 MiB is refused before it is parsed."""
MAX_YAML_NODES = 100_000
"""A config document has a few hundred nodes; past this many, counting every alias at its expanded size, it is
refused before anything is built from it (an alias bomb: nested anchors that expand to billions)."""
MAX_YAML_DEPTH = 32
"""A config nests about 5 levels deep (``gates.families.market_alert.p99_budget_ms.cpu``)."""
_ECHO_CHARS = 200
"""A config error echoes at most this much of a rejected value or key."""


class _Echo(reprlib.Repr):
    """``repr`` of a rejected value for an error message: bounded (never a megabyte) and redacted."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = _ECHO_CHARS
        self.maxlevel = 3

    def repr_str(self, x: str, level: int) -> str:
        return super().repr_str(redact(x), level)


def _clip(text: str, limit: int = _ECHO_CHARS) -> str:
    """``text`` redacted, then cut to ``limit`` characters."""
    text = redact(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _echo(value: Any) -> str:
    return _clip(_Echo().repr(value))


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing a duplicate key and a document that nests past :data:`MAX_YAML_DEPTH` or
    expands past :data:`MAX_YAML_NODES`.

    PyYAML is already a dependency; ruamel.yaml would refuse duplicate keys by default, but the size and alias
    limits would still be ours, so three overrides here cost less than a second YAML library.
    """

    def __init__(self, text: str, source: str, name: str) -> None:
        super().__init__(text)
        self.source = source  # "config file X" or "environment variable Y": how our messages begin
        self.name = name  # how PyYAML's marks name the text, for its own errors
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        # Before Python's recursion limit, and before the scanner's cost, quadratic in nesting, adds up to seconds.
        self.depth += 1
        if self.depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{self.source}, line {self.peek_event().start_mark.line + 1}: nested deeper than "
                              f"{MAX_YAML_DEPTH} levels (a config has about 5)")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        self._expanded_nodes(node, {})
        return node

    def _expanded_nodes(self, node: yaml.Node, counted: dict[int, int]) -> int:
        """Nodes under ``node`` with every alias counted at its full size; an alias is counted once per use."""
        if id(node) not in counted:
            counted[id(node)] = MAX_YAML_NODES + 1  # met again while being counted: an alias to itself, endless
            children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                        else node.value if isinstance(node, yaml.SequenceNode) else [])
            counted[id(node)] = 1 + sum(self._expanded_nodes(c, counted) for c in children)
        if counted[id(node)] > MAX_YAML_NODES:
            raise ConfigError(f"{self.source}, line {node.start_mark.line + 1}: expands to more than "
                              f"{MAX_YAML_NODES:,} nodes once its aliases are expanded (a config has a few hundred); "
                              "refused as an alias bomb")
        return counted[id(node)]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`, whose keys the mapping may override
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base class names an unhashable key
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise ConfigError(f"{self.source}, line {line}: duplicate key {_echo(key)} (first at line "
                                  f"{first_line[key]}); one of them would be silently ignored")
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, source: str, name: str | None = None) -> Any:
    """Parse one YAML document of config; :class:`ConfigError` naming ``source`` on anything a config never is."""
    loader = _ConfigLoader(text, source, name or source)
    try:
        return loader.get_single_data()
    except ConfigError:
        raise
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a date like 2024-02-30, an int of 5,000 digits
        raise ConfigError(f"{source}: not valid YAML: {_clip(str(exc), 1000)}") from None
    finally:
        loader.dispose()


def _read_config_file(path: Path) -> str:
    """The file's text: at most :data:`MAX_CONFIG_BYTES`, UTF-8 (a BOM is allowed)."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
            size = max(len(data), os.fstat(fh.fileno()).st_size)
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path}: {size:,} bytes is over the {MAX_CONFIG_BYTES // 2**20} MiB limit "
                          f"({MAX_CONFIG_BYTES:,} bytes) for a config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"config file {path}: not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} "
                          f"(line {line}): {exc.reason}; save the file as UTF-8") from None


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    paths: dict[tuple[str, ...], str] = {("home",): "FACTORY_HOME"} if env.get("FACTORY_HOME") else {}
    for key in sorted(env):
        if not key.startswith(ENV_PREFIX):
            continue
        path = tuple(p.lower() for p in key[len(ENV_PREFIX):].split("__") if p)
        if not path:
            raise ConfigError(f"environment variable {key}: empty key path")
        if path in paths:
            raise ConfigError(f"environment variables {paths[path]} and {key} both set {'.'.join(path)}")
        paths[path] = key
    for (a, key_a), (b, key_b) in itertools.combinations(paths.items(), 2):
        if a[:len(b)] == b or b[:len(a)] == a:  # FACTORY__TRAIN and FACTORY__TRAIN__MAX_EPOCHS: which one wins?
            raise ConfigError(f"environment variables {key_a} and {key_b} both set {'.'.join(min(a, b, key=len))}")
    over: dict[str, Any] = {}
    for path, key in paths.items():
        value = env[key] if key == "FACTORY_HOME" else _load_yaml(env[key], f"environment variable {key}")
        node = over
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return over


def _spec_defaults() -> dict[str, Any]:
    """Every registered family's defaults from its spec, as data under the keys a file sets: a file that sets one
    key of one family keeps that family's other defaults, and a bad spec value is named like a bad file value."""
    return {"families": {s.family.value: _spec_sizes(s) for s in SPECS.values()},
            "gates": {"families": {s.family.value: _spec_gates(s) for s in SPECS.values()}},
            "monitoring": {"drift": {"family_drift_share": {f.value: v for f, v in _spec_drift_shares().items()}}}}


def _format_error(exc: ValidationError, source: str, max_errors: int = 20) -> str:
    """One line per error, naming the key; every part bounded, the value redacted."""
    errors = exc.errors()
    lines = []
    for err in errors[:max_errors]:
        loc = _clip(".".join(str(p) for p in err["loc"]) or "<root>")
        msg = "unknown key" if err["type"] == "extra_forbidden" else _clip(err["msg"], 500)
        lines.append(f"  {loc}: {msg} (got {_echo(err.get('input'))})")
    if len(errors) > max_errors:
        lines.append(f"  ... and {len(errors) - max_errors} more")
    return f"invalid configuration ({source}):\n" + "\n".join(lines)


def find_config_file(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return p
    if env.get("FACTORY_CONFIG"):
        return find_config_file(env["FACTORY_CONFIG"], {})
    local = Path("factory.yaml")
    return local if local.is_file() else None


def load_config(
    path: str | os.PathLike[str] | None = None,
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> FactoryConfig:
    """Build and validate the configuration.

    Args:
        path: YAML file; if None, ``$FACTORY_CONFIG`` or ``./factory.yaml`` when present.
        profile: ``smoke`` or ``default``; if None, the file's ``profile`` key or ``default``.
        env: environment mapping (``os.environ`` when None).
        overrides: last-applied nested overrides (tests use this).
    """
    env = os.environ if env is None else env
    cfg_file = find_config_file(path, env)
    # Per-family defaults differ by family, so they are layered as data (from the family specs): a file that sets
    # one key of one family keeps that family's other defaults.
    layered: dict[str, Any] = _spec_defaults()
    source = "defaults"
    if cfg_file is not None:
        loaded = _load_yaml(_read_config_file(cfg_file), f"config file {cfg_file}", str(cfg_file)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {cfg_file}: top level must be a mapping, got {type(loaded).__name__}")
        layered = _deep_merge(layered, loaded)
        source = str(cfg_file)
        try:  # the file's own values are checked before a profile can overlay (and hide) them
            FactoryConfig.model_validate({k: v for k, v in layered.items() if k != "profile"})
        except ValidationError as exc:
            raise ConfigError(_format_error(exc, source)) from None
    chosen = profile or env.get("FACTORY_PROFILE") or layered.get("profile") or "default"
    layered = _deep_merge(layered, profile_overlay(chosen))
    layered["profile"] = chosen
    layered = _deep_merge(layered, _env_overrides(env))
    if overrides:
        layered = _deep_merge(layered, overrides)
    try:
        return FactoryConfig.model_validate(layered)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, f"{source} + profile {chosen} + environment")) from None

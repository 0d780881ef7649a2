"""The factory's one typed configuration, validated where it enters.

Layering, lowest first: the defaults in these models (stated once, here) → a YAML
file (``--config``, ``$FACTORY_CONFIG`` or ``./factory.yaml``) → a named profile
overlay (``smoke`` or ``default``) → environment overrides.

Environment overrides: ``FACTORY_HOME`` sets ``home``; any ``FACTORY__A__B=value``
sets ``a.b`` (value parsed as YAML, so ``FACTORY__TRAIN__MAX_EPOCHS=3`` is an int).
An unknown key or a bad value raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import copy
import os
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "FACTORY__"


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it."""


class Family(StrEnum):
    MARKET_ALERT = "market_alert"
    PRICE_DIRECTION = "price_direction"
    FRAUD_RISK = "fraud_risk"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    source: Literal["simulator", "lake"] = "simulator"
    """``simulator`` writes missing days into the lake; ``lake`` only reads what is there."""
    lake_uri: str | None = None
    """Local path or ``s3://bucket/prefix``; defaults to ``<home>/lake``."""
    symbols: list[str] = Field(default_factory=lambda: ["ESZ6", "NQZ6", "AAPL", "MSFT"], min_length=1)
    ticks_per_day: int = Field(20_000, ge=500)
    transactions_per_day: int = Field(40_000, ge=500)
    history_days: int = Field(2, ge=1, le=60)
    """Lake days used for training, ending the day before the logical date."""
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


def _default_families() -> dict[Family, FamilyConfig]:
    return {
        Family.MARKET_ALERT: FamilyConfig(window=60, stride=2, hidden=64, layers=1, threshold=0.9),
        Family.PRICE_DIRECTION: FamilyConfig(window=64, stride=4, hidden=64, layers=2, threshold=0.5),
        Family.FRAUD_RISK: FamilyConfig(window=1, stride=1, hidden=64, layers=2, threshold=0.5),
    }


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

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(p <= 0 for p in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"train/val/test fractions must be positive and sum to 1, got {v}")
        return v


class ExportConfig(_Strict):
    opset: int = Field(18, ge=17)
    """18 is the torch dynamo exporter's native opset; 17 is converted down."""
    parity_atol: float = Field(1e-4, gt=0)
    parity_rtol: float = Field(1e-3, gt=0)
    parity_samples: int = Field(256, ge=8)


class QuantizeConfig(_Strict):
    precisions: list[Literal["fp16", "int8"]] = Field(default_factory=lambda: ["fp16", "int8"])
    calibration_method: Literal["entropy", "max"] = "entropy"
    calibration_size: int = Field(1000, ge=16)


class FactoryConfig(_Strict):
    home: Path = Path(".factory")
    profile: Literal["smoke", "default"] = "default"
    data: DataConfig = DataConfig()
    features: FeatureConfig = FeatureConfig()
    families: dict[Family, FamilyConfig] = Field(default_factory=_default_families)
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    quantize: QuantizeConfig = QuantizeConfig()

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @model_validator(mode="after")
    def _check_windows(self) -> "FactoryConfig":
        alert = self.families.get(Family.MARKET_ALERT)
        if alert and not 30 <= alert.window <= 120:
            raise ValueError(f"families.market_alert.window must be 30..120 ticks, got {alert.window}")
        pdir = self.families.get(Family.PRICE_DIRECTION)
        if pdir and pdir.window != 64:
            raise ValueError(f"families.price_direction.window is fixed at 64 (64x16 input), got {pdir.window}")
        return self

    @property
    def lake_uri(self) -> str:
        return self.data.lake_uri or str(self.home / "lake")

    @property
    def enabled_families(self) -> list[Family]:
        return [f for f in Family if f in self.families and self.families[f].enabled]

    def run_dir(self, date: str) -> Path:
        return self.home / "runs" / date


# Profile overlays. ``default`` is the model defaults above; ``smoke`` shrinks a night
# to a test-sized one while keeping every stage real.
PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "smoke": {
        "data": {"symbols": ["ESZ6", "NQZ6"], "ticks_per_day": 6000, "transactions_per_day": 12000,
                 "history_days": 1},
        "train": {"max_epochs": 8, "patience": 3, "max_train_samples": 6000, "batch_size": 64, "lr": 3e-3},
        "families": {
            "market_alert": {"window": 40, "stride": 2, "hidden": 32},
            "price_direction": {"stride": 2, "hidden": 32, "layers": 1},
            "fraud_risk": {"hidden": 32},
        },
        "export": {"parity_samples": 64},
        "quantize": {"calibration_size": 256},
    },
}


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    over: dict[str, Any] = {}
    if env.get("FACTORY_HOME"):
        over["home"] = env["FACTORY_HOME"]
    for key, raw in sorted(env.items()):
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX):].split("__") if p]
        if not path:
            raise ConfigError(f"environment variable {key}: empty key path")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment variable {key}: cannot parse value {raw!r}: {exc}") from exc
        node = over
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return over


def _family_defaults_as_dict() -> dict[str, Any]:
    return {f.value: c.model_dump() for f, c in _default_families().items()}


def _format_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {loc}: {msg} (got {err.get('input')!r})")
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
    layered: dict[str, Any] = {"families": _family_defaults_as_dict()}
    source = "defaults"
    if cfg_file is not None:
        try:
            loaded = yaml.safe_load(cfg_file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {cfg_file}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {cfg_file}: top level must be a mapping, got {type(loaded).__name__}")
        layered = _deep_merge(layered, loaded)
        source = str(cfg_file)
    chosen = profile or layered.get("profile") or "default"
    if chosen not in PROFILES:
        raise ConfigError(f"profile: unknown profile {chosen!r}; choose one of {sorted(PROFILES)}")
    layered = _deep_merge(layered, PROFILES[chosen])
    layered["profile"] = chosen
    layered = _deep_merge(layered, _env_overrides(env))
    if overrides:
        layered = _deep_merge(layered, overrides)
    try:
        return FactoryConfig.model_validate(layered)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, f"{source} + profile {chosen} + environment")) from exc

"""One spec per model family: what it reads, what it predicts, which windows are its tail, its input axes.

Adding a fourth family means a member of :class:`Family` and an entry in :data:`SPECS` (plus its torch
module in :mod:`pipelines.models`, named by ``architecture``). Nothing else branches on the family.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class Family(StrEnum):
    MARKET_ALERT = "market_alert"
    PRICE_DIRECTION = "price_direction"
    FRAUD_RISK = "fraud_risk"


MARKET_FEATURES = [
    "spread_bps", "imbalance_l1", "imbalance_l5", "depth_log",
    "ret_1", "ret_5", "ret_20", "ret_50",
    "vol", "vol_spike", "volume_anomaly", "volume_log",
    "vwap_dist_bps", "ema_fast_dist_bps", "ema_slow_dist_bps", "gap_log_ms",
]
"""16 market features, in the order the models see them (price_direction: 64x16)."""

FRAUD_FEATURES = [
    "amount_log", "amount_z", "history_24h_log", "since_prev_log",
    "velocity_10m", "velocity_1h", "new_device", "country_mismatch",
    "high_risk_mcc", "hour_sin", "hour_cos",
]
"""11 per-transaction features."""

TailRule = Literal["positives", "anomaly_or_positive", "anomaly_or_top_move"]


@dataclass(frozen=True)
class FamilySpec:
    family: Family
    source: Literal["market", "transactions"]
    """Which feature table feeds it: per-tick market features or per-transaction features."""
    features: tuple[str, ...]
    label: str
    """The label column of that table."""
    architecture: Literal["gru", "cnn_transformer", "mlp"]
    input_axes: tuple[str, ...]
    """Names of the model input's axes. ``seq`` is dynamic (the engine profile spans ``seq_range``)."""
    classes: int
    """Model output columns: 1 (sigmoid) or 2 (softmax; column 1 is the positive class)."""
    tail: TailRule
    """The extreme windows the gates score apart and INT8 calibration keeps (:func:`pipelines.gates.tail_mask`):
    the positives; flash-move windows plus the positives; flash-move windows plus the top 5 % |forward return|."""
    threshold: float
    """Default decision threshold (``families.<name>.threshold`` overrides it)."""
    window: int
    """Default window in ticks (1 for tabular families)."""
    window_range: tuple[int, int]
    """Windows a config may set; the engine profile of a ``seq`` axis spans it."""
    backtest: bool = False
    """Also scored by the P&L backtest (Sharpe)."""

    @property
    def positive_index(self) -> int:
        return 1 if self.classes == 2 else 0

    @property
    def sequence(self) -> bool:
        return "seq" in self.input_axes


SPECS: dict[Family, FamilySpec] = {
    Family.MARKET_ALERT: FamilySpec(
        Family.MARKET_ALERT, "market", tuple(MARKET_FEATURES), "alert_label", "gru", ("batch", "seq", "feature"), 1,
        "anomaly_or_positive", threshold=0.9, window=60, window_range=(30, 120)),
    Family.PRICE_DIRECTION: FamilySpec(
        Family.PRICE_DIRECTION, "market", tuple(MARKET_FEATURES), "direction_label", "cnn_transformer",
        ("batch", "time", "feature"), 2, "anomaly_or_top_move", threshold=0.5, window=64, window_range=(64, 64),
        backtest=True),
    Family.FRAUD_RISK: FamilySpec(
        Family.FRAUD_RISK, "transactions", tuple(FRAUD_FEATURES), "label", "mlp", ("batch", "feature"), 1, "positives",
        threshold=0.5, window=1, window_range=(1, 1)),
}


def spec(family: str | Family) -> FamilySpec:
    return SPECS[Family(family)]

"""Lake schemas: the contract a real feed must meet to replace the simulator.

See docs/lake_schema.md for the prose version. ``date`` and ``symbol`` are not
columns: they live in the partition path ``<dataset>/date=YYYY-MM-DD/symbol=XYZ/``.
"""

from __future__ import annotations

import pyarrow as pa

BOOK_LEVELS = 5
REGIMES = ("bull", "bear", "sideways")

MARKET_DATASET = "market_ticks"
TRANSACTIONS_DATASET = "transactions"
TRANSACTIONS_SYMBOL = "CARD"
"""Transactions use the same partitioning; ``symbol`` is the payment channel."""
CHARGEBACKS_DATASET = "chargebacks"
"""Chargebacks by the day they were reported (``date=``), per channel (``symbol=``): the fraud labels."""

_book = []
for _side in ("bid", "ask"):
    for _lvl in range(1, BOOK_LEVELS + 1):
        _book.append(pa.field(f"{_side}_px_{_lvl}", pa.float64(), nullable=False))
        _book.append(pa.field(f"{_side}_sz_{_lvl}", pa.float64(), nullable=False))

MARKET_SCHEMA = pa.schema(
    [pa.field("ts", pa.timestamp("ns", tz="UTC"), nullable=False)]
    + _book
    + [
        pa.field("last_px", pa.float64(), nullable=False),
        pa.field("last_sz", pa.float64(), nullable=False),
        pa.field("regime", pa.string(), nullable=False),
        pa.field("anomaly", pa.bool_(), nullable=False),
    ]
)
MARKET_OPTIONAL = ("regime", "anomaly")
"""The simulator's ground truth (regime label, planted anomaly): a real feed has neither, so a partition may leave
them out; present, they are validated. Nothing in training or gating reads them: the tail and the calibration
strata are computed from prices and sizes (``flash`` and ``state``, see :mod:`pipelines.features` and
:mod:`pipelines.datasets`)."""

TRANSACTIONS_SCHEMA = pa.schema(
    [
        pa.field("ts", pa.timestamp("ns", tz="UTC"), nullable=False),
        pa.field("txn_id", pa.int64(), nullable=False),
        pa.field("account_id", pa.int64(), nullable=False),
        pa.field("terminal_id", pa.int64(), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("merchant_category", pa.int32(), nullable=False),
        pa.field("country", pa.string(), nullable=False),
        pa.field("home_country", pa.string(), nullable=False),
        pa.field("device_id", pa.int64(), nullable=False),
    ]
)
"""Authorisations. No label: a fraud is known when its chargeback is reported (:data:`CHARGEBACKS_SCHEMA`)."""

CHARGEBACKS_SCHEMA = pa.schema(
    [
        pa.field("ts", pa.timestamp("ns", tz="UTC"), nullable=False),
        pa.field("txn_id", pa.int64(), nullable=False),
        pa.field("txn_ts", pa.timestamp("ns", tz="UTC"), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)
"""``ts``: when the chargeback was reported; ``txn_id``/``txn_ts``: the disputed transaction and its time."""

SCHEMAS = {MARKET_DATASET: MARKET_SCHEMA, TRANSACTIONS_DATASET: TRANSACTIONS_SCHEMA,
           CHARGEBACKS_DATASET: CHARGEBACKS_SCHEMA}
OPTIONAL_COLUMNS = {MARKET_DATASET: MARKET_OPTIONAL}


def present_schema(dataset: str, names: list[str]) -> pa.Schema:
    """The dataset's schema less its optional columns that ``names`` (a partition's columns) leaves out."""
    absent = set(OPTIONAL_COLUMNS.get(dataset, ())) - set(names)
    return pa.schema([f for f in SCHEMAS[dataset] if f.name not in absent])

HIGH_RISK_MCC = (5967, 7995, 4829, 6051)
"""Merchant categories (MCC) over-represented in fraud: direct marketing, gambling,
money transfer, quasi-cash."""

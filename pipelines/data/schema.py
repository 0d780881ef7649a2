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

TRANSACTIONS_SCHEMA = pa.schema(
    [
        pa.field("ts", pa.timestamp("ns", tz="UTC"), nullable=False),
        pa.field("txn_id", pa.int64(), nullable=False),
        pa.field("account_id", pa.int64(), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("merchant_category", pa.int32(), nullable=False),
        pa.field("country", pa.string(), nullable=False),
        pa.field("home_country", pa.string(), nullable=False),
        pa.field("device_id", pa.int64(), nullable=False),
        pa.field("is_fraud", pa.bool_(), nullable=False),
    ]
)

SCHEMAS = {MARKET_DATASET: MARKET_SCHEMA, TRANSACTIONS_DATASET: TRANSACTIONS_SCHEMA}

HIGH_RISK_MCC = (5967, 7995, 4829, 6051)
"""Merchant categories (MCC) over-represented in fraud: direct marketing, gambling,
money transfer, quasi-cash."""

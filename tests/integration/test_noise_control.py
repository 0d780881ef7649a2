"""Leak and noise control: a night on a lake whose labels are shuffled scores at chance and is never promoted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATE = "2026-11-22"


def test_a_night_on_shuffled_fraud_labels_is_at_chance_and_never_promoted(tmp_path):
    """The trap: the champion is at chance on such a window too, so the paired comparison is undecided and an
    ``undecided → promote`` policy would promote noise. The absolute skill check rejects every candidate."""
    from factory_core.config import load_config
    from pipelines.data import lake
    from pipelines.data.payments import simulate_chargebacks
    from pipelines.data.schema import CHARGEBACKS_DATASET, TRANSACTIONS_DATASET, TRANSACTIONS_SYMBOL
    from pipelines.data.simulator import simulate_transactions
    from pipelines.stages import payment_dates

    home = tmp_path / "factory"
    cfg = load_config(profile="smoke", env={"FACTORY_HOME": str(home)})
    rng = np.random.default_rng(11)
    dates = payment_dates(cfg, DATE)  # the payments the night will read, with every chargeback on a random payment
    txns = []
    for day in dates:
        df = simulate_transactions(day, TRANSACTIONS_SYMBOL, cfg.data.transactions_per_day, cfg.data.seed)
        lake.write_partition(cfg.lake_uri, lake.Partition(TRANSACTIONS_DATASET, day, TRANSACTIONS_SYMBOL), df)
        txns.append(df)
    txns = pd.concat(txns, ignore_index=True)
    real = pd.concat([simulate_chargebacks(d, TRANSACTIONS_SYMBOL, cfg.data.transactions_per_day, cfg.data.seed)
                      for d in dates], ignore_index=True)
    real = real[real["txn_ts"] >= pd.Timestamp(dates[0], tz="UTC")]
    pick = txns.iloc[np.sort(rng.choice(len(txns), len(real), replace=False))].reset_index(drop=True)
    delay = pd.to_timedelta(rng.permutation((real["ts"] - real["txn_ts"]).to_numpy()))
    fake = pd.DataFrame({"ts": pick["ts"] + delay, "txn_id": pick["txn_id"], "txn_ts": pick["ts"],
                         "reason": real["reason"].to_numpy()}).sort_values("ts", ignore_index=True)
    for day in dates:
        start = pd.Timestamp(day, tz="UTC")
        lake.write_partition(cfg.lake_uri, lake.Partition(CHARGEBACKS_DATASET, day, TRANSACTIONS_SYMBOL),
                             fake[(fake["ts"] >= start) & (fake["ts"] < start + pd.Timedelta(days=1))])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACTORY", "AIRFLOW"))}
    proc = subprocess.run([str(Path(sys.executable).with_name("factory")), "nightly", "--profile", "smoke", "--date",
                           DATE, "--families", "fraud_risk", "--targets", "cpu"],
                          env={**env, "FACTORY_HOME": str(home), "COLUMNS": "200"}, capture_output=True, text=True,
                          timeout=900)
    out = proc.stdout + proc.stderr
    report = json.loads((home / "runs" / DATE / "gates" / "report.json").read_text())
    (gate,) = [g for g in report["targets"] if g["family"] == "fraud_risk" and g["target"] == "cpu"]
    assert gate["candidates"] and gate["selected"] is None, out[-3000:]
    for c in gate["candidates"]:
        skill = next(k for k in c["checks"] if k["name"] == "skill")
        assert skill["decision"] == "fail" and "no demonstrated skill" in skill["detail"]
        if skill.get("ci"):  # at chance: the interval covers 0.5
            assert skill["ci"][0] <= 0.5 <= skill["ci"][1], skill
    summary = json.loads((home / "runs" / DATE / "summary.json").read_text())
    assert not any(v["promoted"] for p in summary.get("published") or [] for v in p["versions"])
    from model_registry.registry import CHAMPION, NoSuchAlias, Registry

    with pytest.raises(NoSuchAlias):
        Registry(cfg.tracking_uri).resolve("fraud_risk", "cpu", CHAMPION)

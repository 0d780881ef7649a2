"""Leak and noise control: a night on a lake whose labels are shuffled scores at chance and is never promoted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATE = "2026-11-22"


def test_a_night_on_shuffled_fraud_labels_is_at_chance_and_never_promoted(tmp_path):
    """The trap: the champion is at chance on such a window too, so the paired comparison is undecided and an
    ``undecided → promote`` policy would promote noise. The absolute skill check rejects every candidate."""
    from factory_core.config import load_config
    from pipelines.data import lake
    from pipelines.data.schema import TRANSACTIONS_DATASET, TRANSACTIONS_SYMBOL
    from pipelines.data.simulator import simulate_transactions
    from pipelines.stages import plan

    home = tmp_path / "factory"
    cfg = load_config(profile="smoke", env={"FACTORY_HOME": str(home)})
    rng = np.random.default_rng(11)
    for day in plan(cfg, DATE).lake_dates:  # the lake the night will read, with every label shuffled
        df = simulate_transactions(day, TRANSACTIONS_SYMBOL, cfg.data.transactions_per_day, cfg.data.seed)
        df["is_fraud"] = rng.permutation(df["is_fraud"].to_numpy())
        lake.write_partition(cfg.lake_uri, lake.Partition(TRANSACTIONS_DATASET, day, TRANSACTIONS_SYMBOL), df)
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

"""``factory reproduce``: the night's record, the refusals before any re-run, and how verdicts are named.

The re-run itself (a smoke night reproduced, and one with another seed planted) is in
``tests/integration/test_nightly.py``, on the suite's own night."""

import json

import pytest

from factory_core.config import FactoryConfig, load_config
from factory_core.contracts import Plan
from pipelines import reproduce as rp
from pipelines.data import lake
from pipelines.data.simulator import simulate_market

DATE = "2026-11-22"


@pytest.fixture
def night(tmp_path):
    """A home whose lake holds one partition and whose run folder holds the night's record."""
    cfg = load_config(profile="smoke", env={"FACTORY_HOME": str(tmp_path / "home")})
    part = lake.Partition("market_ticks", "2026-11-21", "ESZ6")
    lake.write_partition(cfg.lake_uri, part, simulate_market(part.date, part.symbol, 600, 7))
    plan = Plan(date=DATE, lake_dates=[part.date], families=["fraud_risk"], targets=["cpu"],
                run_uri=cfg.run_layout(DATE).uri)
    rp.record_night(cfg, plan, {part.key: lake.partition_sha256(cfg.lake_uri, part)})
    return cfg, part


def test_the_record_names_code_config_seeds_versions_and_each_partition_hash(night):
    cfg, part = night
    record = json.loads(open(cfg.run_layout(DATE).record()).read())
    assert record["code"] == rp.code_identity()
    assert record["seeds"] == {"data.seed": cfg.data.seed, "train.seed": cfg.train.seed}
    assert FactoryConfig.model_validate(record["config"]).train == cfg.train  # the resolved config loads back
    assert record["lake"] == {"uri": cfg.lake_uri, "partitions": {part.key: lake.partition_sha256(cfg.lake_uri, part)}}
    assert record["plan"]["families"] == ["fraud_risk"] and "torch" in record["versions"]


def test_a_changed_or_missing_partition_is_refused_naming_it(night):
    cfg, part = night
    record = json.loads(open(cfg.run_layout(DATE).record()).read())
    assert rp.check_lake(record) == 1
    lake.write_partition(cfg.lake_uri, part, simulate_market(part.date, part.symbol, 600, 8), check_history=False)
    with pytest.raises(rp.ReproduceRefused, match=f"lake partition {part.key} changed since the night"):
        rp.check_lake(record)
    lake.partition_file(cfg.lake_uri, part)[0].delete_file(lake.partition_file(cfg.lake_uri, part)[1])
    with pytest.raises(rp.ReproduceRefused, match=f"lake partition {part.key} is gone"):
        rp.check_lake(record)


def test_other_code_is_refused_unless_allowed_then_said():
    night = {"commit": "a" * 40, "tree": "t" * 64, "changes": ""}
    here = {"commit": "b" * 40, "tree": "t" * 64, "changes": "c" * 64}
    assert rp.check_code(night, dict(night), allow_change=False) == []
    assert rp.check_code(night, {**night, "commit": "d" * 40}, allow_change=False) == []  # a docs-only commit since
    with pytest.raises(rp.ReproduceRefused, match=r"ran code aaaaaaaaaaaa, this is bbbbbbbbbbbb with uncommitted "
                                                  r"changes cccccccccccc: check out the recorded commit"):
        rp.check_code(night, here, allow_change=False)
    (warning,) = rp.check_code(night, here, allow_change=True)
    assert "--allow-code-change" in warning and "aaaaaaaaaaaa" in warning
    with pytest.raises(rp.ReproduceRefused, match="ran code aaaaaaaaaaaa, this is dddddddddddd:"):
        rp.check_code(night, {**night, "commit": "d" * 40, "tree": "u" * 64}, allow_change=False)
    (unpinned,) = rp.check_code({"commit": "unknown", "tree": "unknown", "changes": ""}, here, allow_change=False)
    assert "not pinned" in unpinned


def test_the_command_refuses_a_night_without_a_record_and_a_bad_set(tmp_path, capsys, monkeypatch):
    from pipelines.cli import main

    monkeypatch.setenv("FACTORY_HOME", str(tmp_path))  # --home sets it; restored after the test

    assert main(["reproduce", "2026-11-20", "--home", str(tmp_path / "elsewhere")]) == 2
    assert "night 2026-11-20: no record.json" in capsys.readouterr().err
    with pytest.raises(rp.ReproduceRefused, match="expected KEY=VALUE"):
        rp.parse_sets(["train.seed"])


def test_the_rerun_reads_the_recorded_lake_and_writes_only_to_scratch(night, tmp_path):
    cfg, _ = night
    record = json.loads(open(cfg.run_layout(DATE).record()).read())
    scratch = tmp_path / "scratch"
    got = FactoryConfig.model_validate(rp.reproduction_config(record, scratch, rp.parse_sets(["train.seed=99"])))
    assert got.home == scratch and got.runs_root == str(scratch / "runs")
    assert got.lake_uri == cfg.lake_uri and got.data.source == "lake"  # read as recorded, never simulated into
    assert got.tracking_uri.endswith(str(scratch / "mlflow" / "mlflow.db")) and got.store_uri.startswith(str(scratch))
    assert got.train.seed == 99 and got.train.max_epochs == cfg.train.max_epochs


def _check(name, decision, value):
    return {"name": name, "decision": decision, "value": value}


def test_gate_decisions_compare_without_latency_or_the_champion():
    night = {"fp32": [_check("engine_auc_drop", "pass", 0.001), _check("p99_budget", "pass", 0.2),
                      _check("vs_champion", "pass", 0.01)]}
    same = rp._decisions("gate_cpu", "f", "candidates", night, {"fp32": [_check("engine_auc_drop", "pass", 0.001),
                                                                         _check("p99_budget", "undecided", 0.9)]})
    assert same.verdict == rp.IDENTICAL  # latency and the night's champion are not the artifact's
    moved = rp._decisions("gate_cpu", "f", "candidates", night, {"fp32": [_check("engine_auc_drop", "pass", 0.002)]})
    assert moved.verdict == rp.EQUIVALENT and "engine_auc_drop" in moved.detail
    flipped = rp._decisions("gate_cpu", "f", "candidates", night, {"fp32": [_check("engine_auc_drop", "fail", 0.2)]})
    assert flipped.verdict == rp.DIFFERENT and "fp32 engine_auc_drop: fail, the night pass" in flipped.detail


def test_the_first_differing_stage_is_named_and_what_follows_from_it():
    order = rp.stage_order(["cpu", "sm_90"])
    rows = [rp.Row("features", "", "fraud.parquet", rp.IDENTICAL),
            rp.Row("train", "a", "model.pt", rp.DIFFERENT), rp.Row("export", "a", "model.fp32.onnx", rp.DIFFERENT),
            rp.Row("engine_cpu", "a", "fp32 engine", rp.EQUIVALENT), rp.Row("engine_sm_90", "a", "x", rp.SKIPPED),
            rp.Row("gate_cpu", "a", "candidates", rp.EQUIVALENT),
            rp.Row("train", "b", "model.pt", rp.IDENTICAL), rp.Row("gate_cpu", "b", "candidates", rp.EQUIVALENT)]
    assert rp.mark_followers(rows, order) == "train"
    by = {(r.stage, r.family): r for r in rows}
    assert by[("train", "a")].follows == ""
    for stage in ("export", "engine_cpu", "gate_cpu"):  # a different model's engine is not "equivalent"
        assert (by[(stage, "a")].verdict, by[(stage, "a")].follows) == (rp.DIFFERENT, "train[a]")
    assert by[("engine_sm_90", "a")].verdict == rp.SKIPPED  # never made identical or different here
    assert by[("gate_cpu", "b")].verdict == rp.EQUIVALENT  # the other family is untouched
    assert rp.mark_followers([rp.Row("train", "a", "model.pt", rp.IDENTICAL)], order) is None
    from rich.console import Console

    console = Console(record=True, width=200)
    rp.print_table(rows, "2026-11-22", console)
    assert "follows from train[a]" in console.export_text()  # a name in brackets, not rich markup


def test_outputs_within_the_precisions_canary_tolerance():
    import numpy as np

    from factory_core.precisions import precision

    expected = np.linspace(0, 1, 10, dtype=np.float32).reshape(-1, 1)
    atol, rtol = precision("fp16").canary
    row = rp._tolerance_row("variants", "f", "model.fp16.onnx", expected + atol / 2, expected, "fp16", "10 windows")
    assert row.verdict == rp.EQUIVALENT and "within fp16 canary" in row.detail
    row = rp._tolerance_row("variants", "f", "model.fp16.onnx", expected + 0.1, expected, "fp16", "10 windows")
    assert row.verdict == rp.DIFFERENT and "10 rows beyond" in row.detail

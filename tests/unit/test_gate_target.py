"""gate_<target> on a real (small) fraud_risk night: each planted engine is rejected by the check that should
catch it, while the healthy engines beside it pass."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from factory_core.config import load_config
from factory_core.contracts import Status
from pipelines import faults, stages

DATE = "2026-11-22"


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    home = tmp_path_factory.mktemp("gate_target") / "factory"
    cfg = load_config(profile="smoke", env={"FACTORY_HOME": str(home)}, overrides={
        "engines": {"targets": [{"name": "cpu", "required": True}]}, "benchmark": {"iters": 280, "rounds": 7}})
    p = stages.plan(cfg, DATE, families=["fraud_risk"])
    fs = stages.build_features(cfg, p, stages.ingest(cfg, p))
    tr = stages.train(cfg, p, fs, "fraud_risk")
    ex = stages.export(cfg, p, tr)
    vs = stages.make_variants(cfg, p, ex)
    for prec in ("fp32", "fp16"):
        stages.build_engine(cfg, p, vs, prec, "cpu")
    return cfg, p, vs, tr, ex


def _gate(night, tmp_path, plant=None):
    cfg, p, vs = night[:3]
    g = faults.gate_planted(cfg, p, vs, "cpu", tmp_path, plant)
    return {c.precision: c.model_dump(mode="json") for c in g.candidates}, g


def _engine_plant(fn):
    return faults.in_engine("fraud_risk", "cpu", "fp32", fn)


def _failed(c):
    return {k["name"] for k in c["checks"] if not k["ok"]}


def test_healthy_engines_pass_with_lineage_agreement_and_latency_rounds(night, tmp_path):
    got, g = _gate(night, tmp_path)
    assert g.status is Status.OK and g.selected in ("fp32", "fp16")
    for c in got.values():
        assert c["status"] == "ok", _failed(c)
        names = {k["name"] for k in c["checks"]}
        assert {"lineage", "engine_finite", "engine_agree_mean_abs", "parity", "p99_budget"} <= names
    assert g.champion.comparable is False and "no champion yet" in g.champion.reason


def test_an_engine_with_shifted_outputs_is_rejected_on_its_own_outputs(night, tmp_path):
    got, _ = _gate(night, tmp_path, _engine_plant(lambda s, d: faults.shift_outputs(s, d, 0.04)))
    assert got["fp32"]["status"] == "rejected" and got["fp16"]["status"] == "ok"
    assert {"engine_agree_mean_abs", "engine_calibration_shift"} <= _failed(got["fp32"])
    parity = next(k for k in got["fp32"]["checks"] if k["name"] == "parity")
    assert parity["decision"] == "fail" and parity["gating"] is False  # diagnostic only


def test_nan_on_rare_inputs_is_caught_on_every_test_window(night, tmp_path):
    from pipelines.datasets import load_splits

    cfg, p = night[:2]
    test = load_splits(Path(p.run_uri) / "fraud_risk" / "train" / "splits.npz")["test"]
    thr = faults.rare_threshold(test.x, 0, 0.002)
    rare = int((test.x[:, 0] > thr).sum())
    assert 1 <= rare <= 0.01 * len(test.x)
    got, _ = _gate(night, tmp_path, _engine_plant(lambda s, d: faults.nan_on_rare_inputs(s, d, 0, thr)))
    assert "engine_finite" in _failed(got["fp32"]) and got["fp16"]["status"] == "ok"
    finite = next(k for k in got["fp32"]["checks"] if k["name"] == "engine_finite")
    assert finite["value"] == rare and f"on {len(test.x)} test windows" in finite["detail"]


def test_an_engine_built_from_another_graph_fails_lineage(night, tmp_path):
    def other_graph(run):  # the fp32 engine replaced by the fp16 graph's engine, labelled fp32
        fp32_dir = run / "fraud_risk" / "engines" / "cpu" / "fp32"
        shutil.rmtree(fp32_dir)
        shutil.copytree(run / "fraud_risk" / "engines" / "cpu" / "fp16", fp32_dir)
        import json

        m = json.loads((fp32_dir / "manifest.json").read_text())
        m["precision"] = "fp32"
        (fp32_dir / "manifest.json").write_text(json.dumps(m))

    got, _ = _gate(night, tmp_path, other_graph)
    assert "lineage" in _failed(got["fp32"])
    assert "not the fp32 variant that passed accuracy" in next(
        k["detail"] for k in got["fp32"]["checks"] if k["name"] == "lineage")
    assert got["fp16"]["status"] == "ok"


def test_a_slow_engine_fails_the_regression_against_the_champion(night, tmp_path):
    """With a champion in the registry, a slowed candidate is caught by the interleaved rounds."""
    from model_registry.registry import Registry

    cfg, p, _, tr, ex = night
    got, g = _gate(night, tmp_path)
    published = stages.publish(cfg, p, tr, ex, stages.gate_report(cfg, p, [], [g]))
    assert [(v.target, v.promoted) for v in published.versions] == [("cpu", True)]
    assert Registry(cfg.tracking_uri).resolve("fraud_risk", "cpu", "champion")
    got, g = _gate(night, tmp_path / "again", _engine_plant(lambda s, d: faults.slow_down(s, d)))
    assert g.champion.comparable and g.champion.registry_version == published.versions[0].registry_version
    assert {"p50_vs_champion", "p99_vs_champion"} & _failed(got["fp32"]), _failed(got["fp32"])
    assert got["fp16"]["status"] == "ok"
    vs = next(k for k in got["fp16"]["checks"] if k["name"] == "vs_champion")
    assert vs["decision"] in ("pass", "undecided") and vs["ok"]

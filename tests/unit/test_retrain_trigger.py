"""A drift-triggered nightly: the asset events name the families and reasons; the plan narrows to them."""

import types

import pytest

from factory_core.config import ConfigError, load_config
from pipelines import stages
from pipelines.orchestration import retrain_request


def _event(families, reasons):
    return types.SimpleNamespace(extra={"families": families, "reasons": reasons})


def test_asset_events_become_families_and_a_recorded_reason():
    ctx = {"triggering_asset_events": {"model-factory://retrain": [
        _event(["market_alert"], ["market_alert/cpu vs champion v3: 11/16 feature columns drifted"]),
        _event(["fraud_risk"], ["fraud_risk/cpu vs champion v2: 3/9 feature columns drifted"])]}}
    families, reason = retrain_request(ctx)
    assert families == ["fraud_risk", "market_alert"]
    assert reason.startswith("drift: market_alert/cpu") and "fraud_risk/cpu" in reason


def test_without_asset_events_the_night_is_scheduled_or_manual():
    assert retrain_request({"dag_run": types.SimpleNamespace(run_type="scheduled")}) == (None, "schedule")
    assert retrain_request({"dag_run": types.SimpleNamespace(run_type="DagRunType.MANUAL")}) == (None, "manual")


def test_plan_narrows_to_the_drifted_families_and_refuses_unknown_ones(tmp_path):
    cfg = load_config(env={}, overrides={"home": str(tmp_path)})
    p = stages.plan(cfg, "2026-03-02", families=["fraud_risk"], trigger="drift: fraud_risk/cpu …")
    assert p.families == ["fraud_risk"] and p.trigger.startswith("drift:")
    assert stages.plan(cfg, "2026-03-02").families == ["market_alert", "price_direction", "fraud_risk"]
    with pytest.raises(ConfigError, match="not enabled families"):
        stages.plan(cfg, "2026-03-02", families=["options_pricer"])

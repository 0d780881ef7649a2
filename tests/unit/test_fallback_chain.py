"""A serving host resolves its engine: its exact architecture, then an ampere_plus engine of another
architecture (Ampere or newer hosts only), then the CPU engine; each step says why."""

from __future__ import annotations

from types import SimpleNamespace

from model_registry.pull import choose_engine
from model_registry.registry import NoSuchAlias


class _Registry:
    """The registry's answers (the thin seam: which aliases exist, with which tags)."""

    def __init__(self, champions: dict[str, dict]):
        self.champions = champions

    def resolve(self, family, target, alias):
        if target not in self.champions:
            raise NoSuchAlias(f"no {family}.{target}@{alias}")
        return SimpleNamespace(version="1", tags=self.champions[target])


GPUS = ["sm_80", "sm_86", "sm_89", "sm_90", "sm_100"]


def test_exact_then_compatible_then_cpu():
    reg = _Registry({"sm_90": {}, "sm_80": {"hardware_compatibility": "ampere_plus"}, "cpu": {}})
    assert choose_engine(reg, "fraud_risk", "sm_90", "champion", GPUS).step == "exact"
    c = choose_engine(reg, "fraud_risk", "sm_89", "champion", GPUS)
    assert (c.target, c.step) == ("sm_80", "compatible") and "no fraud_risk.sm_89@champion" in c.reason
    assert "ampere_plus" in c.reason


def test_an_engine_without_hardware_compatibility_is_not_used_on_another_architecture():
    reg = _Registry({"sm_80": {"hardware_compatibility": "none"}, "cpu": {}})
    c = choose_engine(reg, "fraud_risk", "sm_86", "champion", GPUS)
    assert (c.target, c.step) == ("cpu", "cpu") and "sm_80@champion is not hardware-compatible" in c.reason


def test_pre_ampere_hosts_and_cpu_hosts_fall_to_the_cpu_engine():
    reg = _Registry({"sm_80": {"hardware_compatibility": "ampere_plus"}, "cpu": {}})
    assert choose_engine(reg, "fraud_risk", "sm_75", "champion", GPUS).target == "cpu"
    c = choose_engine(reg, "fraud_risk", "cpu", "champion", GPUS)
    assert (c.target, c.reason) == ("cpu", "no GPU on this host")

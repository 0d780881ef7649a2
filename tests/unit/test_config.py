import pytest

from factory_core.config import ConfigError, Family, load_config


def test_defaults_and_smoke_profile(factory_home):
    default = load_config()
    smoke = load_config(profile="smoke")
    assert default.profile == "default" and smoke.profile == "smoke"
    assert smoke.data.ticks_per_day < default.data.ticks_per_day
    assert default.families[Family.MARKET_ALERT].threshold == 0.9
    assert default.home == factory_home.resolve()
    assert smoke.lake_uri == str(factory_home.resolve() / "lake")


def test_yaml_file_then_profile_then_env(factory_home, tmp_path, monkeypatch):
    cfg_file = tmp_path / "factory.yaml"
    cfg_file.write_text("data:\n  seed: 99\n  history_days: 3\ntrain:\n  max_epochs: 4\n")
    monkeypatch.setenv("FACTORY__TRAIN__MAX_EPOCHS", "2")
    cfg = load_config(cfg_file, profile="smoke")
    assert cfg.data.seed == 99
    assert cfg.data.history_days == 1  # the smoke overlay applies after the file
    assert cfg.train.max_epochs == 2  # the environment applies last


def test_unknown_key_is_named(factory_home, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_epoch: 3\n")
    with pytest.raises(ConfigError, match=r"train\.max_epoch: unknown key"):
        load_config(bad)


def test_bad_value_is_named(factory_home, monkeypatch):
    monkeypatch.setenv("FACTORY__DATA__TICKS_PER_DAY", "-5")
    with pytest.raises(ConfigError, match=r"data\.ticks_per_day"):
        load_config()


def test_market_alert_window_range(factory_home):
    with pytest.raises(ConfigError, match=r"market_alert\.window must be 30\.\.120"):
        load_config(overrides={"families": {"market_alert": {"window": 200}}})


def test_unknown_profile_and_missing_file(factory_home):
    with pytest.raises(ConfigError, match="unknown profile 'huge'"):
        load_config(profile="huge")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope.yaml")


def test_split_must_sum_to_one(factory_home):
    with pytest.raises(ConfigError, match=r"train\.split"):
        load_config(overrides={"train": {"split": [0.5, 0.2, 0.2]}})


@pytest.mark.parametrize("body, key", [
    ("train:\n  batch_size: lots\n", r"train\.batch_size"),
    ("train:\n  max_epochs: -5\n", r"train\.max_epochs"),
    ("engines:\n  targets: [cpu, sm_9x]\n", r"target name 'sm_9x'"),
])
def test_file_values_are_checked_before_the_profile_overlays_them(factory_home, tmp_path, body, key):
    """The smoke profile sets these keys itself; a bad value in the file must still be named, not hidden."""
    bad = tmp_path / "factory.yaml"
    bad.write_text(body)
    with pytest.raises(ConfigError, match=key) as err:
        load_config(bad, profile="smoke")
    assert str(bad) in str(err.value)


def test_a_target_must_be_a_real_compute_capability(factory_home):
    for name in ("sm_999", "sm_9x", "sm_91"):
        with pytest.raises(ConfigError, match=f"target name '{name}'"):
            load_config(overrides={"engines": {"targets": ["cpu", name]}})
    assert [t.name for t in load_config(overrides={"engines": {"targets": ["cpu", "sm_120"]}}).declared_targets()] == [
        "cpu", "sm_120"]


def test_a_profile_sizes_a_night_and_never_changes_its_shape():
    """The DAG's tasks come from the file; a run's profile must not add, drop or move a target or a family."""
    from factory_core.config import PROFILES

    for name, overlay in PROFILES.items():
        assert "targets" not in overlay.get("engines", {}), name
        assert not any("enabled" in f for f in overlay.get("families", {}).values()), name
    shapes = {p: [(t.name, t.queue, t.pool) for t in load_config(profile=p, env={}).declared_targets()]
              for p in PROFILES}
    assert len({tuple(s) for s in shapes.values()}) == 1, shapes

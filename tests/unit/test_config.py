import pytest

from pipelines.config import ConfigError, Family, load_config


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

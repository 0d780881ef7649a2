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
    from factory_core.config import PROFILES, profile_overlay

    for name in PROFILES:
        overlay = profile_overlay(name)  # under smoke, each family's sizes come from its spec
        assert "targets" not in overlay.get("engines", {}), name
        assert not any("enabled" in f for f in overlay.get("families", {}).values()), name
    shapes = {p: [(t.name, t.queue, t.pool) for t in load_config(profile=p, env={}).declared_targets()]
              for p in PROFILES}
    assert len({tuple(s) for s in shapes.values()}) == 1, shapes


# --- What a config file or override never is: each fault planted, each refused by name -------------------------

def _billion_laughs(levels: int = 9) -> str:
    """The classic alias bomb: each anchor lists the previous one 9 times, 9**9 strings once expanded."""
    names = [f"l{i}" for i in range(levels)]
    lines = [f"{names[0]}: &{names[0]} [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip(names, names[1:])]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_expands(factory_home, tmp_path):
    bomb = tmp_path / "factory.yaml"
    bomb.write_text(_billion_laughs())
    with pytest.raises(ConfigError, match=r"expands to more than 100,000 nodes .* alias bomb") as err:
        load_config(bomb)
    assert str(bomb) in str(err.value) and len(str(err.value)) < 2000


def test_an_alias_bomb_in_an_environment_override_is_refused(factory_home, monkeypatch):
    flow = "[" + ", ".join(f"&{n} [{', '.join(['*' + p] * 9)}]" for p, n in zip("abcdefg", "bcdefgh")) + "]"
    monkeypatch.setenv("FACTORY__DATA__SYMBOLS", "[&a [x, x, x, x, x, x, x, x, x], " + flow[1:])
    with pytest.raises(ConfigError, match=r"environment variable FACTORY__DATA__SYMBOLS.*alias bomb") as err:
        load_config()
    assert len(str(err.value)) < 2000


def test_anchors_and_merge_keys_a_config_may_use_still_load(factory_home, tmp_path):
    ok = tmp_path / "factory.yaml"
    ok.write_text("families:\n  price_direction: &small {hidden: 32, layers: 1}\n  fraud_risk:\n    <<: *small\n"
                  "    hidden: 16\n")
    cfg = load_config(ok)
    assert (cfg.families[Family.PRICE_DIRECTION].hidden, cfg.families[Family.FRAUD_RISK].hidden) == (32, 16)
    assert cfg.families[Family.FRAUD_RISK].layers == 1


def test_an_oversize_file_is_refused_naming_the_limit(factory_home, tmp_path):
    big = tmp_path / "factory.yaml"
    big.write_bytes(b"# padding\n" * 110_000)  # 1.1 MB of comments: valid YAML, not a config
    with pytest.raises(ConfigError, match=r"1,100,000 bytes is over the 1 MiB limit \(1,048,576 bytes\)") as err:
        load_config(big)
    assert str(big) in str(err.value)


def test_a_duplicate_key_is_refused_naming_it_and_both_lines(factory_home, tmp_path):
    dup = tmp_path / "factory.yaml"
    dup.write_text("data:\n  seed: 1\n  history_days: 2\n  seed: 3\n")
    with pytest.raises(ConfigError, match=r"line 4: duplicate key 'seed' \(first at line 2\)") as err:
        load_config(dup)
    assert str(dup) in str(err.value)


@pytest.mark.parametrize("env, named", [
    ({"FACTORY__TRAIN__MAX_EPOCHS": "2", "FACTORY__train__max_epochs": "3"}, r"both set train\.max_epochs"),
    ({"FACTORY__TRAIN": "{max_epochs: 3}", "FACTORY__TRAIN__MAX_EPOCHS": "2"}, r"both set train$"),
    ({"FACTORY__TRAIN": "{max_epochs: 3, max_epochs: 2}"}, r"FACTORY__TRAIN, line 1: duplicate key 'max_epochs'"),
])
def test_a_key_set_twice_in_the_environment_is_refused(factory_home, env, named):
    with pytest.raises(ConfigError, match=named):
        load_config(env=env)


def test_a_non_utf8_file_is_named_with_the_offending_byte(factory_home, tmp_path):
    latin = tmp_path / "factory.yaml"
    latin.write_bytes("data:\n  symbols: [ESZ6, café]\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"not UTF-8: byte 0xe9 at offset 27 \(line 2\)") as err:
        load_config(latin)
    assert str(latin) in str(err.value)


@pytest.mark.parametrize("body, named", [
    ("a: " + "[" * 1000 + "]" * 1000 + "\n", r"line 1: nested deeper than 32 levels"),
    ("a: &a [1, *a]\n", r"line 1: expands to more than 100,000 nodes"),  # an alias to itself: endless
    ("data:\n  seed: 2024-02-30\n", r"not valid YAML: day is out of range for month"),
    ("data: [unclosed\n", r"(?s)not valid YAML: .*expected ',' or ']'"),
])
def test_yaml_no_config_holds_is_a_named_error(factory_home, tmp_path, body, named):
    bad = tmp_path / "factory.yaml"
    bad.write_text(body)
    with pytest.raises(ConfigError, match=named) as err:
        load_config(bad)
    assert str(bad) in str(err.value) and len(str(err.value)) < 2000


def test_a_huge_bad_value_is_echoed_short(factory_home, tmp_path):
    bad = tmp_path / "factory.yaml"
    bad.write_text("train:\n  batch_size: " + "x" * 500_000 + "\nbogus: [" + ", ".join(["y" * 1000] * 500) + "]\n")
    with pytest.raises(ConfigError, match=r"train\.batch_size.*\n.*bogus: unknown key") as err:
        load_config(bad)
    assert len(str(err.value)) < 2000


PASSWORD = "hunter2-s3cret"


@pytest.mark.parametrize("section, key, value, belongs", [
    ("registry", "s3_endpoint_url", f"http://minio:{PASSWORD}@minio.local:9000", "AWS credential chain"),
    ("registry", "store_uri", f"s3://AKIAEXAMPLE:{PASSWORD}@engines/store", "AWS credential chain"),
    ("registry", "tracking_uri", f"https://ops:{PASSWORD}@mlflow.local", "MLFLOW_TRACKING_PASSWORD"),
    ("data", "lake_uri", f"s3://AKIAEXAMPLE:{PASSWORD}@lake/prefix", "AWS credential chain"),
    ("runs", "root", f"s3://AKIAEXAMPLE:{PASSWORD}@runs", "AWS credential chain"),
    ("monitoring", "prediction_log_uri", f"s3://AKIAEXAMPLE:{PASSWORD}@preds", "AWS credential chain"),
    ("monitoring", "pushgateway_url", f"http://push:{PASSWORD}@gateway:9091", "private network"),
])
@pytest.mark.parametrize("via", ["file", "env"])
def test_credentials_in_any_uri_key_are_refused_without_echoing_them(factory_home, tmp_path, monkeypatch, via,
                                                                       section, key, value, belongs):
    import traceback

    if via == "file":
        (tmp_path / "factory.yaml").write_text(f"{section}:\n  {key}: {value}\n")
    else:
        monkeypatch.setenv(f"FACTORY__{section.upper()}__{key.upper()}", value)
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: .*credentials in a URI") as err:
        load_config()
    assert belongs in str(err.value) and "***@" in str(err.value)
    assert PASSWORD not in "".join(traceback.format_exception(err.value))  # nor in a chained cause


def test_a_uri_without_credentials_loads(factory_home):
    cfg = load_config(env={"FACTORY__REGISTRY__S3_ENDPOINT_URL": "http://minio.local:9000",
                           "FACTORY__RUNS__ROOT": "s3://runs/nightly", "FACTORY__DATA__LAKE_URI": "/data/lake@2026"})
    assert (cfg.registry.s3_endpoint_url, cfg.runs_root, cfg.lake_uri) == (
        "http://minio.local:9000", "s3://runs/nightly", "/data/lake@2026")


def test_agreement_bounds_are_per_family_and_precision(factory_home, monkeypatch):
    from factory_core.families import spec

    monkeypatch.setenv("FACTORY__GATES__FAMILIES__MARKET_ALERT__AGREEMENT__INT8__MEAN_ABS", "5e-4")
    cfg = load_config()
    alert, pdir = cfg.gates.families[Family.MARKET_ALERT], cfg.gates.families[Family.PRICE_DIRECTION]
    assert alert.agreement["int8"].mean_abs == 5e-4
    assert alert.agreement["int8"].p99_abs == spec(Family.MARKET_ALERT).agreement["int8"]["p99_abs"]  # the rest stays
    assert pdir.agreement["int8"].mean_abs == spec(Family.PRICE_DIRECTION).agreement["int8"]["mean_abs"]


def test_the_retired_global_agreement_key_names_the_new_one(factory_home, tmp_path):
    old = tmp_path / "factory.yaml"
    old.write_text("gates:\n  agreement:\n    int8:\n      mean_abs: 0.02\n")
    with pytest.raises(ConfigError, match=r"gates\.agreement: .*set gates\.families\.<family>\.agreement\.<precision>"):
        load_config(old)

"""The smoke nightly end to end, through the real CLI and Airflow ``dag.test`` on SQLite."""

import html
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATE = "2026-11-22"
FAMILIES = ("market_alert", "price_direction", "fraud_risk")
# Learnability on the smoke profile, fixed seeds: test AUC clearly above chance (0.5).
MIN_AUC = {"market_alert": 0.75, "price_direction": 0.55, "fraud_risk": 0.85}


NARROW = ("--targets", "cpu", "sm_90")
"""The DAG has every configured target (cpu, sm_80 … sm_100); a run's params narrow it to two."""
LEFT_OUT = ("sm_80", "sm_86", "sm_89", "sm_100")

MARKERS = {"AWS_ACCESS_KEY_ID": "AKIAMARKERKEY7QX0", "AWS_SECRET_ACCESS_KEY": "marker-aws-secret-5b1f",
           "MLFLOW_TRACKING_USERNAME": "marker-user-77", "MLFLOW_TRACKING_PASSWORD": "marker-pw-91c2"}
"""Credentials in every place the factory takes them from; no output may ever contain one."""


def _factory(home: Path, *args: str, extra_env: dict | None = None,
             drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACTORY", "AIRFLOW", *drop))}
    env.update({"FACTORY_HOME": str(home), "COLUMNS": "200", **(extra_env or {})})
    cmd = [str(Path(sys.executable).with_name("factory")), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=home.parent)


@pytest.fixture(scope="module")
def services(mlflow_server, s3_server):
    """The smoke night registers in a real MLflow server and pushes to a real S3 server (moto) over HTTP."""
    from .conftest import make_bucket

    env = {**MARKERS, "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    make_bucket(s3_server, "nightly")
    return {**env, "FACTORY__REGISTRY__TRACKING_URI": mlflow_server.uri,
            "FACTORY__REGISTRY__STORE_URI": "s3://nightly/engines", "FACTORY__REGISTRY__S3_ENDPOINT_URL": s3_server}


@pytest.fixture(scope="module")
def night(tmp_path_factory, services):
    home = tmp_path_factory.mktemp("nightly") / "factory"
    proc = _factory(home, "nightly", "--profile", "smoke", "--date", DATE, *NARROW, extra_env=services)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return home, proc


def test_models_and_onnx_for_every_family(night):
    home, proc = night
    run = home / "runs" / DATE
    summary = json.loads((run / "summary.json").read_text())
    assert sorted(r["family"] for r in summary["families"]) == sorted(FAMILIES)
    for fam in FAMILIES:
        assert (run / fam / "train" / "model.pt").is_file()
        assert (run / fam / "onnx" / "model.fp32.onnx").is_file()
        assert fam in proc.stdout  # the summary table names it
    assert "run state: success" in proc.stdout.replace("DagRunState.SUCCESS", "success")
    assert "  done     plan " in proc.stdout and "  done     publish " in proc.stdout  # one line per task


def test_each_family_learns_above_chance(night):
    home, _ = night
    summary = json.loads((home / "runs" / DATE / "summary.json").read_text())
    for row in summary["families"]:
        auc = row["train"]["metrics"]["auc"]
        assert auc > MIN_AUC[row["family"]], f"{row['family']} test AUC {auc:.3f} <= {MIN_AUC[row['family']]}"
        assert row["export"]["max_abs_err"] < 1e-4
    pdir = next(r for r in summary["families"] if r["family"] == "price_direction")
    assert {"sharpe", "hit_rate"} <= set(pdir["train"]["metrics"])


def test_fp32_fp16_int8_variants_for_every_family(night):
    home, proc = night
    summary = json.loads((home / "runs" / DATE / "summary.json").read_text())
    for row in summary["families"]:
        vs = {v["precision"]: v for v in row["variants"]["variants"]}
        assert set(vs) == {"fp32", "fp16", "int8"}
        if row["family"] == "fraud_risk":  # on the 18 payments features ModelOpt quantizes its hidden Gemms
            assert vs["int8"]["coverage"]["quantized"].get("Gemm", 0) >= 1
        for v in vs.values():
            assert Path(v["onnx_uri"]).is_file() and np.isfinite(v["val_metrics"]["auc"])
        assert abs(vs["fp16"]["val_metrics"]["auc"] - vs["fp32"]["val_metrics"]["auc"]) < 0.01
        assert len(row["variants"]["calibration_sha256"]) == 64
    pdir = next(r for r in summary["families"] if r["family"] == "price_direction")
    int8 = next(v for v in pdir["variants"]["variants"] if v["precision"] == "int8")
    assert int8["coverage"]["quantized"].get("Conv") == 2
    assert "Precision variants" in proc.stdout


def test_cpu_engines_with_manifests_and_gpu_targets_skipped_with_reason(night):
    from pipelines.engines.base import verify_manifest

    home, proc = night
    summary = json.loads((home / "runs" / DATE / "summary.json").read_text())
    for row in summary["families"]:
        by = {(e["target"], e["precision"]): e for e in row["engines"]}
        assert set(by) == {(t, p) for t in ("cpu", "sm_90", *LEFT_OUT) for p in ("fp32", "fp16", "int8")}
        for t in LEFT_OUT:  # left out by the run's params: recorded, with the reason, never a ConfigError
            assert {by[(t, p)]["status"] for p in ("fp32", "fp16", "int8")} == {"skipped"}
            assert "left out of this run by its params" in by[(t, "fp32")]["reason"]
        for p in ("fp32", "fp16", "int8"):
            cpu = by[("cpu", p)]
            assert cpu["status"] == "ok"
            m = verify_manifest(Path(cpu["engine_dir"]))  # hashes match the bytes
            assert (m.family, m.target, m.precision, m.backend) == (row["family"], "cpu", p, "onnxruntime")
            assert (m.sha256["calibration"] == row["variants"]["calibration_sha256"]) == (p == "int8")
            gpu = by[("sm_90", p)]
            assert gpu["status"] == "skipped" and ("TensorRT" in gpu["reason"] or "no layer quantized" in gpu["reason"])
    assert "Engines" in proc.stdout and "skipped" in proc.stdout


def test_gates_select_a_healthy_cpu_engine_per_family(night):
    home, proc = night
    report = json.loads((home / "runs" / DATE / "gates" / "report.json").read_text())
    for a in report["accuracy"]:  # FP32 and FP16 are healthy: they must pass the accuracy gate
        by = {v["precision"]: v for v in a["verdicts"]}
        assert by["fp32"]["status"] == "ok" and by["fp16"]["status"] == "ok", (a["family"], by)
    for g in report["targets"]:
        if g["target"] in LEFT_OUT:
            assert g["status"] == "skipped" and "left out of this run by its params" in g["reason"]
            continue
        if g["target"] == "sm_90":
            assert g["status"] == "skipped" and not g["candidates"]
            continue
        assert g["status"] == "ok" and g["selected"] in ("fp32", "fp16", "int8")
        assert sorted(c["precision"] for c in g["candidates"]) == ["fp16", "fp32", "int8"]
        for c in g["candidates"]:
            checks = {k["name"]: k for k in c["checks"]}
            assert checks["lineage"]["decision"] == "pass"  # built from the graph that passed accuracy
            for name in ("engine_finite", "engine_agree_mean_abs", "engine_decision_flips", "engine_auc_drop"):
                assert checks[name]["n"] > 0, name  # scored on the engine's own outputs, every test window
            assert checks["parity"]["gating"] is False
            b1 = c["benchmark"]["batch1"]
            assert len(b1["rounds_p99_ms"]) == 7 and c["benchmark"]["host"]["cpus"] >= 1
            assert b1["p50_ms"] <= b1["p90_ms"] <= b1["p99_ms"] <= b1["max_ms"] and c["benchmark"]["info"]["threads"] == 1
            assert c["outcome"] == "selected" or c["outcome"].startswith(("slower: p99", "tie with", "rejected: "))
    assert (home / "runs" / DATE / "gates" / "accuracy_vs_p99.png").stat().st_size > 10_000
    assert "Gates" in proc.stdout and "selected" in proc.stdout


def test_reproduce_reruns_the_night_from_its_record_and_finds_every_artifact_identical_or_equivalent(
        night, services, tmp_path):
    """``factory reproduce`` re-runs the suite's night into a scratch home from what it recorded and compares it
    stage by stage; the night's own folder and registry are left as they were."""
    from model_registry.registry import Registry

    home, _ = night
    summary = home / "runs" / DATE / "summary.json"
    before = summary.stat().st_mtime_ns
    reg = Registry(services["FACTORY__REGISTRY__TRACKING_URI"])
    versions = {fam: len(reg.find(fam, "cpu")) for fam in FAMILIES}
    scratch = tmp_path / "again"
    proc = _factory(home, "reproduce", DATE, "--scratch", str(scratch), extra_env=services)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((scratch / "reproduce.json").read_text())
    assert report["first_different"] is None
    rows = {(r["stage"], r["family"], r["artifact"]): r for r in report["rows"]}
    for (stage, fam, artifact), r in rows.items():
        if stage.endswith("sm_90"):  # no TensorRT here: said, never called identical
            assert r["verdict"] == "skipped" and ("TensorRT" in r["detail"] or "no layer quantized" in r["detail"]
                                                   or "no sm_90 engines" in r["detail"]), r
        else:
            assert r["verdict"] in ("identical", "equivalent"), r
    for fam in FAMILIES:
        for stage, artifact in (("train", "model.pt"), ("export", "model.fp32.onnx"), ("variants", "model.int8.onnx"),
                                ("engine_cpu", "fp16 engine"), ("accuracy", "verdicts"), ("gate_cpu", "candidates")):
            assert (stage, fam, artifact) in rows, (stage, fam, artifact)
    out = " ".join(proc.stdout.split())
    assert "Reproduction of 2026-11-22" in out and "reproduced ·" in out and "NOT reproduced" not in out
    assert "  done     train " in proc.stdout  # the night's own progress lines
    assert summary.stat().st_mtime_ns == before  # the night is read, never written
    assert {fam: len(reg.find(fam, "cpu")) for fam in FAMILIES} == versions  # nor its registry


def test_reproduce_with_another_seed_planted_names_train_as_the_first_difference(night, services, tmp_path):
    home, _ = night
    scratch = tmp_path / "planted"
    proc = _factory(home, "reproduce", DATE, "--scratch", str(scratch), "--families", "fraud_risk",
                    "--set", "train.seed=99", extra_env=services)
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((scratch / "reproduce.json").read_text())
    assert report["first_different"] == "train"
    rows = report["rows"]
    assert [r["verdict"] for r in rows if r["stage"] in ("ingest", "features")] == ["identical"] * 2
    assert next(r for r in rows if r["artifact"] == "model.pt")["verdict"] == "different"
    after = [r for r in rows if r["stage"] not in ("ingest", "features", "train") and r["verdict"] != "skipped"]
    assert {r["stage"] for r in after} >= {"export", "variants", "engine_cpu", "accuracy", "gate_cpu"}
    assert all(r["verdict"] == "different" and r["follows"] == "train[fraud_risk]" for r in after), after
    out = " ".join(proc.stdout.split())
    assert "NOT reproduced: first differing stage train" in out and "follows from train[fraud_risk]" in out


def test_night_registers_in_mlflow_and_pushes_to_s3_then_pull_serves_it(night, services, tmp_path):
    from model_registry.registry import CHALLENGER, CHAMPION, Registry
    from model_registry.runtime import EngineRunner
    from model_registry.store import S3Store

    home, _ = night
    summary = json.loads((home / "runs" / DATE / "summary.json").read_text())
    reg = Registry(services["FACTORY__REGISTRY__TRACKING_URI"])
    store = S3Store("s3://nightly/engines", endpoint_url=services["FACTORY__REGISTRY__S3_ENDPOINT_URL"])
    for pub in summary["published"]:
        (v,) = [v for v in pub["versions"] if v["target"] == "cpu"]
        champ = reg.resolve(pub["family"], "cpu", CHAMPION)
        assert champ.version == v["registry_version"] == reg.resolve(pub["family"], "cpu", CHALLENGER).version
        tags = champ.tags
        assert {"precision", "backend", "backend_version", "compute_capability", "manifest_sha256", "source_run",
                "data_window", "git_commit"} <= set(tags)
        assert tags["source_run"] == pub["run_id"] and champ.description
        assert store.exists(pub["family"], "cpu", tags["factory_version"])
        run = reg.client.get_run(pub["run_id"])
        assert "test_auc" in run.data.metrics
        arts = {a.path for a in reg.client.list_artifacts(pub["run_id"])}
        assert {"pytorch", "onnx", "gates", "reference", "evidence"} <= arts  # reference: drift_monitor's baseline
        # the version rests on its evidence page: logged in its run, linked from its description (the UI's route)
        assert tags["evidence_page"] == f"runs:/{pub['run_id']}/evidence/cpu.html"
        assert {a.path for a in reg.client.list_artifacts(pub["run_id"], "evidence")} == {"evidence/night.html",
                                                                                         "evidence/cpu.html"}
        assert f"/runs/{pub['run_id']}/artifactPath/evidence/cpu.html)" in champ.description
        # the UI's Schema section: the route the UI calls, served from the version's source in the store
        url = (f"{services['FACTORY__REGISTRY__TRACKING_URI']}/model-versions/get-artifact?path=MLmodel"
               f"&name={pub['family']}.cpu&version={champ.version}")
        mlmodel = yaml.safe_load(urllib.request.urlopen(url, timeout=30).read())
        inputs = json.loads(mlmodel["signature"]["inputs"])
        assert inputs[0]["type"] == "tensor" and inputs[0]["tensor-spec"]["dtype"] == "float32"
        assert json.loads(mlmodel["signature"]["outputs"])[0]["name"] == "prob"
    dest = tmp_path / "serving"
    proc = _factory(home, "pull", "market_alert", "--target", "cpu", "--dest", str(dest), extra_env=services)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runner = EngineRunner(dest / "market_alert" / "cpu" / "current")
    x = np.random.default_rng(0).normal(size=(3, 40, 16)).astype(np.float32)
    assert runner.predict(x).shape == (3, 1)


def test_the_night_s_evidence_pages_render_in_chromium_with_the_decision_and_every_candidate(night, services,
                                                                                             chromium, tmp_path):
    """The pages a reviewer opens from a version in the MLflow UI, as logged by this smoke night, in a real browser."""
    import mlflow

    from pipelines.evidence_page import decision_text

    home, _ = night
    report = json.loads((home / "runs" / DATE / "gates" / "report.json").read_text())
    summary = json.loads((home / "runs" / DATE / "summary.json").read_text())
    mlflow.set_tracking_uri(services["FACTORY__REGISTRY__TRACKING_URI"])
    for pub in summary["published"]:
        folder = Path(mlflow.artifacts.download_artifacts(run_id=pub["run_id"], artifact_path="evidence",
                                                          dst_path=str(tmp_path / pub["family"])))
        for name in ("night.html", "cpu.html"):
            dom = chromium.dump_dom(folder / name)
            for g in (g for g in report["targets"] if g["family"] == pub["family"] and g["target"] == "cpu"):
                reg = next(v for v in pub["versions"] if v["target"] == "cpu")
                assert decision_text(g, reg) in html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", dom)))
                assert re.findall(r'<tr class="cand"><td>(\w+)</td>', dom) == [c["precision"] for c in g["candidates"]]
                compared = any(k["name"] == "vs_champion" for c in g["candidates"] for k in c["checks"])
                assert dom.count("<svg") == 2 + compared  # agreement, latency, and the forest plot with a champion
    shot = chromium.screenshot(folder / "cpu.html", tmp_path / "page.png", 1280, 1200)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"))
    assert (img.min(axis=2) < 200).mean() > 0.03  # not blank


def test_rerun_same_date_is_idempotent(night, services):
    home, _ = night
    lake_files = sorted((home / "lake").rglob("*.parquet"))
    mtimes = [p.stat().st_mtime_ns for p in lake_files]
    first = json.loads((home / "runs" / DATE / "summary.json").read_text())
    proc = _factory(home, "nightly", "--profile", "smoke", "--date", DATE, *NARROW, extra_env=services)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in lake_files] == mtimes  # lake untouched
    second = json.loads((home / "runs" / DATE / "summary.json").read_text())
    for a, b in zip(first["families"], second["families"]):
        assert a["train"]["metrics"]["auc"] == pytest.approx(b["train"]["metrics"]["auc"], abs=1e-6)
    # the second night measured the first night's champion beside its candidates
    report = json.loads((home / "runs" / DATE / "gates" / "report.json").read_text())
    cpu = [g for g in report["targets"] if g["target"] == "cpu"]
    assert all(g["champion"] and g["champion"]["comparable"] and g["champion"]["p99_ms"] > 0 for g in cpu)
    leftovers = [p for p in (home / "runs").rglob(".tmp-*")] + [p for p in (home / "runs").rglob(".old-*")]
    assert leftovers == []
    # the registry tells the truth about the store: one version per family x target for the date, same engine
    from factory_core.contracts import engine_identity
    from model_registry.registry import CHAMPION, Registry
    from model_registry.store import S3Store

    reg = Registry(services["FACTORY__REGISTRY__TRACKING_URI"])
    store = S3Store("s3://nightly/engines", endpoint_url=services["FACTORY__REGISTRY__S3_ENDPOINT_URL"])
    for fam in FAMILIES:
        assert len(reg.find(fam, "cpu", date=DATE)) == 1
        mv = reg.resolve(fam, "cpu", CHAMPION)
        dest = home / "check" / fam
        dest.mkdir(parents=True)
        manifest = store.fetch(fam, "cpu", mv.tags["factory_version"], dest)
        assert (engine_identity(manifest), manifest.precision) == (mv.tags["engine_identity"], mv.tags["precision"])


def test_replay_catches_the_shift_and_triggers_retraining_once_per_episode(night, services):
    """The loop on one machine: serve the champion on a shifted day; drift_monitor (dag.test) runs on four
    consecutive windows of it, catches the shift, and requests one retrain for the episode.

    The shift (from 40 % of the day) moves book depth wholly out of its reference range: one column of 16 at
    PSI about 14, caught by ``severe_score`` (10), not by the share. The second window is 60 %
    shifted, and may or may not drift (docs/monitoring.md, "Severity")."""
    import boto3

    home, _ = night
    # A 67-minute replay day (smoke sessions are 5 minutes): each drift window (17 minutes) is long against
    # the market's slowest volatility component (half-life 5 minutes), as an hourly window is in production; a
    # 100-second window would be one volatility state, and drift from any reference (docs/monitoring.md).
    proc = _factory(home, "replay", "market_alert", "--profile", "smoke", "--date", DATE, "--requests", "2000",
                    "--windows", "4", extra_env=services | {"FACTORY__DATA__TICKS_PER_DAY": "80000"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    assert "simulated with a regime shift" in out and "served 2000 requests on champion" in out
    assert "DRIFT" in out and "retrain triggered: asset event on model-factory://retrain" in out
    assert out.count("requested (asset event)") == 1  # once per episode...
    assert "episode open: not again" in out  # ...though the next window drifts too
    assert "nightly_model_factory is queued on the asset" in out
    # for the right reason: the first window (before the shift at 40 % of the day) is in the reference's range,
    # and the wholly shifted ones drift on book depth, out of its range
    checks = sorted((home / "drift" / "market_alert" / "cpu").glob("*/summary.json"))[-4:]
    runs = [json.loads(p.read_text()) for p in checks]
    status = [r["status"] for r in runs]
    assert status[0] == "ok" and status[2:] == ["drift", "drift"], status
    assert all("depth_log" in r["severe_columns"] for r in runs[2:]) and runs[0]["severe_columns"] == [], runs
    s3 = boto3.client("s3", endpoint_url=services["FACTORY__REGISTRY__S3_ENDPOINT_URL"], region_name="us-east-1")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="nightly", Prefix="engines/")
            for o in page.get("Contents", [])]
    assert any(k.startswith(f"engines/predictions/market_alert/cpu/date={DATE}/") for k in keys)
    assert any(k.startswith("engines/drift/market_alert/cpu/") and k.endswith("/report.html") for k in keys)
    prom = (home / "metrics" / "factory_drift_market_alert_cpu.prom").read_text()
    assert 'factory_drift_detected{family="market_alert",target="cpu"} 1.0' in prom


def test_next_night_meets_the_champion_on_evidence_and_promotes_a_non_inferior_challenger(night, services):
    """Two smoke nights in one home: the second compares each candidate with the first night's champion,
    paired on its own test window, and promotes when the challenger is not shown worse."""
    from model_registry.registry import CHAMPION, Registry

    home, _ = night
    nxt = "2026-11-23"
    proc = _factory(home, "nightly", "--profile", "smoke", "--date", nxt, *NARROW, extra_env=services)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((home / "runs" / nxt / "gates" / "report.json").read_text())
    summary = json.loads((home / "runs" / nxt / "summary.json").read_text())
    promoted = {(p["family"], v["target"]): v for p in summary["published"] for v in p["versions"]}
    reg = Registry(services["FACTORY__REGISTRY__TRACKING_URI"])
    for g in (g for g in report["targets"] if g["target"] == "cpu"):
        assert g["champion"]["comparable"], g["champion"]
        rounds = g["champion"]["benchmark"]["batch1"]["rounds_p99_ms"]
        assert len(rounds) == 7  # measured interleaved with the candidates, in the same task
        for c in g["candidates"]:
            vs = next(k for k in c["checks"] if k["name"] == "vs_champion")
            assert vs["decision"] in ("pass", "fail", "undecided") and "positives" in vs["detail"]
            if vs["decision"] != "undecided":
                lo, hi = vs["ci"]
                assert lo <= vs["value"] <= hi
            for stat in ("p50", "p99"):
                assert next(k for k in c["checks"] if k["name"] == f"{stat}_vs_champion")["n"] == 7
        win = next((c for c in g["candidates"] if c["outcome"] == "selected"), None)
        if win is not None:  # a selected challenger was not shown worse: registered, promoted on evidence only
            v = promoted[(g["family"], "cpu")]
            vs = next(k for k in win["checks"] if k["name"] == "vs_champion")
            champ = reg.resolve(g["family"], "cpu", CHAMPION).version
            assert reg.resolve(g["family"], "cpu", "challenger").version == v["registry_version"]
            if vs["decision"] == "pass":  # non-inferior on evidence: the champion now
                assert v["promoted"] and champ == v["registry_version"], v
            else:  # undecided under the default keep_champion (the champion is a day old): kept, and said so
                assert vs["holds_champion"] and not v["promoted"] and champ != v["registry_version"], v
                assert "champion kept" in v["note"] and "keep_champion" in v["note"], v


def test_a_champion_the_store_lost_is_kept_not_promoted_over_without_comparison(night, services):
    """The champion's store folder is gone: tonight's gate cannot measure it, so the night registers the
    challenger, keeps the champion, and says why on the console and in the summary (it used to auto-promote)."""
    import shutil

    import boto3

    from model_registry.registry import CHAMPION, Registry

    home, _ = night
    reg = Registry(services["FACTORY__REGISTRY__TRACKING_URI"])
    champ = reg.resolve("fraud_risk", "cpu", CHAMPION)
    s3 = boto3.client("s3", endpoint_url=services["FACTORY__REGISTRY__S3_ENDPOINT_URL"], region_name="us-east-1")
    prefix = f"engines/fraud_risk/cpu/{champ.tags['factory_version']}/"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="nightly", Prefix=prefix).get("Contents", [])]
    assert keys
    s3.delete_objects(Bucket="nightly", Delete={"Objects": [{"Key": k} for k in keys]})
    shutil.rmtree(home / "cache" / "champions", ignore_errors=True)  # no local copy to fall back on either
    date = "2026-11-24"
    proc = _factory(home, "nightly", "--profile", "smoke", "--date", date, "--families", "fraud_risk", "--targets",
                    "cpu", extra_env=services)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = " ".join(proc.stdout.split())  # the console folds long lines
    assert f"NOT PROMOTED fraud_risk.cpu" in out and f"kept champion v{champ.version}" in out
    assert "no committed version" in out
    assert reg.resolve("fraud_risk", "cpu", CHAMPION).version == champ.version
    summary = json.loads((home / "runs" / date / "summary.json").read_text())
    (v,) = summary["published"][0]["versions"]
    assert not v["promoted"] and f"kept champion v{champ.version}" in v["note"]
    # one console line per finished task instance, every night
    import re

    lines = re.findall(r"^\s+(done|skip|FAILED)\s+(\w+)", proc.stdout, flags=re.M)
    assert {"plan", "ingest", "train", "publish", "summarize"} <= {t for _, t in lines}, proc.stdout[-3000:]


_PUBLISH = """
import os, signal, sys
from model_registry import registry, store
from pipelines import stages
from factory_core.config import load_config

where, family, date, report = sys.argv[1:5]
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
def after(cls, name):
    orig = getattr(cls, name)
    def wrapped(*a, **k):
        out = orig(*a, **k)
        die()
        return out
    setattr(cls, name, wrapped)
if where == "after_store_put":
    after(store.S3Store, "put_version")
elif where == "after_register":
    after(registry.Registry, "register")
elif where == "before_promote":
    registry.Registry.promote = die
import json
from factory_core.contracts import ExportResult, GateReport, TrainResult
cfg = load_config(profile="smoke")
row = next(r for r in json.load(open(report.replace("gates/report.json", "summary.json")))["families"]
           if r["family"] == family)
stages.publish(cfg, stages.plan(cfg, date), TrainResult.model_validate(row["train"]),
               ExportResult.model_validate(row["export"]), GateReport.model_validate_json(open(report).read()))
"""


def test_kill_9_at_any_point_of_publish_then_rerun_leaves_registry_matching_store(night, services, tmp_path):
    """publish killed after the store put, after registering, and before promoting, then run to the end:
    one version for the date, no MLflow run left RUNNING, and the registry's engine is the store's byte for byte."""
    import mlflow

    from factory_core.contracts import engine_identity
    from factory_core.fsutil import sha256_file
    from model_registry.registry import CHAMPION, Registry
    from model_registry.store import S3Store

    home, _ = night
    family, db = "price_direction", tmp_path / "mlflow.db"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("FACTORY", "AIRFLOW"))}, **services,
           "FACTORY_HOME": str(home), "FACTORY__REGISTRY__TRACKING_URI": f"sqlite:///{db}",
           "FACTORY__REGISTRY__STORE_URI": "s3://nightly/kill-test"}
    report = str(home / "runs" / DATE / "gates" / "report.json")
    for where in ("after_store_put", "after_register", "before_promote", "none"):
        proc = subprocess.run([sys.executable, "-c", _PUBLISH, where, family, DATE, report], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == (0 if where == "none" else -9), (where, proc.stderr[-3000:])
    reg = Registry(f"sqlite:///{db}")
    versions = reg.find(family, "cpu")
    assert [mv.tags["date"] for mv in versions] == [DATE]  # exactly one version for the date
    mv = reg.resolve(family, "cpu", CHAMPION)
    assert mv.version == versions[0].version
    store = S3Store("s3://nightly/kill-test", endpoint_url=services["FACTORY__REGISTRY__S3_ENDPOINT_URL"])
    assert store.versions(family, "cpu") == [mv.tags["factory_version"]]  # nothing orphaned in the store
    got = tmp_path / "fetched"
    got.mkdir()
    manifest = store.fetch(family, "cpu", mv.tags["factory_version"], got)
    assert engine_identity(manifest) == mv.tags["engine_identity"]
    assert sha256_file(got / manifest.engine_file) == mv.tags["engine_sha256"] == manifest.sha256["engine"]
    assert manifest.precision == mv.tags["precision"]
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.family = '{family}'")
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
    assert sum(r.info.status == "FAILED" for r in runs) == 3  # the three killed runs, closed by the re-runs


def test_no_credential_reaches_any_output(night, services, mlflow_server):
    """Marker credentials (AWS keys, MLflow basic auth) were in the environment of every night of this module:
    no secret appears in the console output, task logs, run directories, summaries or either database. The
    MLflow user name is an identity, not a secret: the tracking server records it as each run's user, and only
    there."""
    home, proc = night
    user = MARKERS["MLFLOW_TRACKING_USERNAME"]
    leaks = []
    for marker in MARKERS.values():
        if marker in proc.stdout + proc.stderr:
            leaks.append(("console", marker))
        for root in (home, mlflow_server.root):
            for f in Path(root).rglob("*"):
                if f.is_file() and marker.encode() in f.read_bytes():
                    leaks.append((f.name, marker))
    assert [(f, m) for f, m in leaks if not (m == user and f == "mlflow.db")] == []
    runs = json.loads((home / "runs" / DATE / "summary.json").read_text())["published"]
    from model_registry.registry import Registry

    assert Registry(mlflow_server.uri).client.get_run(runs[0]["run_id"]).info.user_id == user


def test_a_closed_tracking_port_is_retried_at_preflight_then_ends_the_night_naming_the_endpoint(tmp_path):
    """An outage, not bad config: the preflight task retries (``runs.task_retries``, here 1 s apart) and the night
    ends once they are spent, naming the endpoint, with no MLflow retry storm."""
    import time

    from .conftest import free_port

    port = free_port()
    t0 = time.perf_counter()
    proc = _factory(tmp_path / "home", "nightly", "--profile", "smoke", "--date", DATE,
                    extra_env={"FACTORY__REGISTRY__TRACKING_URI": f"http://127.0.0.1:{port}",
                               "FACTORY__RUNS__RETRY_DELAY_S": "1"})
    elapsed = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert f"tracking server http://127.0.0.1:{port} (registry.tracking_uri) is unreachable: refused" in out
    assert "ServiceUnreachable" in out and out.count("retry    plan") >= 1, out[-3000:]  # retried, not final
    assert elapsed < 180, elapsed  # docs/registry.md: bounded; no MLflow retry storm
    # the outcome task still asks the registry for champion freshness: one call, MLflow retries bounded at 2
    assert out.count("Retrying (Retry(") <= 2, out.count("Retrying (Retry(")


def test_a_store_without_credentials_ends_the_night_at_once_naming_it(tmp_path, services):
    import time

    t0 = time.perf_counter()
    proc = _factory(tmp_path / "home", "nightly", "--profile", "smoke", "--date", DATE, drop=("AWS_",),
                    extra_env={"FACTORY__REGISTRY__STORE_URI": "s3://nightly/nocreds",
                               "FACTORY__REGISTRY__S3_ENDPOINT_URL": services["FACTORY__REGISTRY__S3_ENDPOINT_URL"],
                               "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                               "AWS_EC2_METADATA_DISABLED": "true"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "engine store (registry.store_uri) s3://nightly/nocreds" in out and "credentials: none found" in out
    assert time.perf_counter() - t0 < 180


def test_a_second_night_for_the_same_date_is_refused_naming_the_running_one(tmp_path):
    import json as _json
    import socket

    home = tmp_path / "home"
    lock = home / "locks" / f"night-{DATE}.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(_json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-11-22T02:00"}))
    proc = _factory(home, "nightly", "--profile", "smoke", "--date", DATE)
    assert proc.returncode == 75  # a lock conflict (EX_TEMPFAIL: try again later), not bad config (2)
    assert f"a night for {DATE} is already running" in proc.stderr and f"pid {os.getpid()}" in proc.stderr
    lock.write_text(_json.dumps({"pid": 2 ** 22 + 7, "host": socket.gethostname(), "started": "x"}))  # gone
    from factory_core.config import load_config
    from pipelines.cli import night_lock

    with night_lock(load_config(profile="smoke", env={"FACTORY_HOME": str(home)}), DATE):  # a killed night's lock
        assert _json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_bad_partition_fails_the_run_naming_task_partition_and_column(tmp_path):
    home = tmp_path / "factory"
    from pipelines.data.simulator import simulate_market

    bad = simulate_market("2026-11-21", "ESZ6", 6000, 7)
    bad.loc[100, "bid_px_1"] = bad.loc[100, "ask_px_1"] + 0.05
    path = home / "lake" / "market_ticks" / "date=2026-11-21" / "symbol=ESZ6" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(bad, preserve_index=False), path)
    proc = _factory(home, "nightly", "--profile", "smoke", "--date", DATE)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "FAILED task ingest" in out
    assert "market_ticks/date=2026-11-21/symbol=ESZ6: column 'bid_px_1': crossed book" in out
    assert not (home / "runs" / DATE / "features").exists()  # nothing downstream was written


def test_bad_config_exits_2_naming_the_key(tmp_path):
    home = tmp_path / "factory"
    cfg = tmp_path / "factory.yaml"
    cfg.write_text("data:\n  tick_per_day: 10\n")
    proc = _factory(home, "nightly", "--config", str(cfg), "--date", DATE)
    assert proc.returncode == 2
    assert "data.tick_per_day: unknown key" in proc.stderr

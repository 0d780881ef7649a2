"""The evidence page, rendered from a recorded smoke night's gate report (night 2026-11-13 of
``benchmarks/gate_reliability.py``: market_alert's three candidates shown worse than its champion, fraud_risk's FP32
selected on an undecided comparison and its INT8 rejected), and read back in headless Chromium."""

from __future__ import annotations

import functools
import gzip
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from factory_core.config import load_config
from monitoring.drift import DriftResult, DriftStatus
from monitoring.performance_estimate import estimate_performance
from pipelines.evidence_page import EvidencePageError, decision_text, policy_of, render

REPORT = json.loads(gzip.decompress((Path(__file__).parent / "data" / "gate_report_2026-11-13.json.gz").read_bytes()))
CFG = load_config(profile="smoke", env={})
HELD = {"target": "cpu", "registry_version": "4", "store_uri": "s3://engines/fraud_risk/cpu/x", "precision": "fp32",
        "promoted": False, "note": "champion kept, v4 is challenger: auc degradation … policy keep_champion"}


def _gate(family: str, target: str = "cpu") -> dict:
    return next(g for g in REPORT["targets"] if g["family"] == family and g["target"] == target)


@functools.cache
def _drift() -> dict:
    """A drift check of fraud_risk's champion with a real label-free estimate (calibrated scores)."""
    rng = np.random.default_rng(0)
    p = rng.beta(0.5, 20, 6000)
    ref = pd.DataFrame({"prediction": p, "label": (rng.random(6000) < p).astype(float),
                        "split": np.where(np.arange(6000) < 3000, "val", "test")})
    est = estimate_performance(ref, rng.beta(0.5, 20, 4000), 0.1)
    result = DriftResult("fraud_risk", "cpu", "2026-11-13T00:00:00+00:00", "2026-11-13T01:00:00+00:00",
                         DriftStatus.OK, reason="fraud_risk/cpu vs champion v1: 0/18 feature columns drifted",
                         champion_version="1", n_reference=5000, n_current=4000, estimate=est)
    return result.to_dict()


def _page(family: str, **kw) -> str:
    return render(REPORT, family, policy=policy_of(CFG, family), **kw)


@functools.cache
def _fraud_page() -> str:
    """fraud_risk's version page for cpu: held as challenger, with a drift check and its label-free estimate."""
    return _page("fraud_risk", target="cpu", registered=[HELD], monitoring={"cpu": _drift()},
                 run={"git_commit": "0123abcd"})


def _text(markup: str) -> str:
    """The text a reader sees (cells and blocks apart), whitespace collapsed."""

    class Text(HTMLParser):
        def __init__(self):
            super().__init__()
            self.parts: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag in ("td", "th", "tr", "p", "li", "div", "h1", "h2", "h3", "section"):
                self.parts.append(" ")  # a block or a cell: the reader sees a break

        def handle_data(self, data):
            self.parts.append(data)

    t = Text()
    t.feed(markup)
    return re.sub(r"\s+", " ", "".join(t.parts))


def test_decisions_say_what_the_gates_decided_and_what_the_registry_did():
    assert decision_text(_gate("market_alert")) == ("No candidate passed every gate: nothing registered for cpu; the "
                                                    "champion v2 stays.")
    held = decision_text(_gate("fraud_risk"), HELD)
    assert held.startswith("fp32 selected (lowest batch-1 p99 among the candidates that passed every gate); "
                           "undecided against champion v1 (champion − challenger AUC +0.0624, CI [+0.0061, +0.1255], "
                           "margin 0.01); the policy keeps the champion; registered as v4 (challenger): champion kept")
    vs = next(k for k in _gate("fraud_risk")["candidates"][1]["checks"] if k["name"] == "vs_champion")
    note = f"champion kept, v4 is challenger: {vs['detail']}"  # as auto_promote writes it
    assert decision_text(_gate("fraud_risk"), HELD | {"note": note}).endswith(
        "registered as v4 (challenger): champion kept, v4 is challenger.")  # the interval is not said twice
    promoted = decision_text(_gate("fraud_risk"), HELD | {"promoted": True, "note": ""})
    assert promoted.endswith("registered as v4, promoted to champion.")
    promote = json.loads(json.dumps(_gate("fraud_risk")))  # as under gates.champion.undecided: promote
    for c in promote["candidates"]:
        for k in c["checks"]:
            k["holds_champion"] = False
    assert "undecided against champion v1" in decision_text(promote) and "the policy lets it replace the champion" \
        in decision_text(promote)
    first = json.loads(json.dumps(_gate("fraud_risk")))
    first["champion"] = {"family": "fraud_risk", "target": "cpu", "reason": "no champion yet"}
    for c in first["candidates"]:
        c["checks"] = [k for k in c["checks"] if k["name"] != "vs_champion"]
    assert "no champion yet" in decision_text(first)


def test_the_page_is_self_contained_and_shows_every_section():
    page = _fraud_page()
    assert not re.search(r"<script|<link|<iframe|@import|url\((?!#)", page, re.I)  # url(#…): SVG clip paths
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)  # nothing fetched
    assert page.count("<svg") == 3  # forest, agreement, latency
    text = _text(page)
    assert decision_text(_gate("fraud_risk"), HELD) in text
    for key in ("gates.champion.undecided = keep_champion", "gates.auto_promote = true",
                "gates.families.fraud_risk.champion_auc_margin = 0.01", "gates.champion.refresh_after_days = 7"):
        assert key in text
    assert "margin 0.01" in page  # the forest plot's margin line, as SVG text
    int8 = _gate("fraud_risk")["candidates"][2]
    assert int8["precision"] == "int8" and int8["status"] == "rejected"
    assert "rejected by accuracy, engine_tail_mean_abs, engine_tail_calibration_shift" in text
    assert html.unescape(next(k for k in int8["checks"] if k["name"] == "engine_tail_mean_abs")["detail"]) in text
    assert "1.29 → 1.29 · 2 · 100%" in text  # host load around the rounds
    assert "Label-free estimate (CBPE) on 4000 unlabelled rows, trusted: calibration calibrated" in text


def test_a_target_with_nothing_registered_still_says_why_each_candidate_lost():
    text = _text(_page("market_alert"))
    for c in _gate("market_alert")["candidates"]:
        assert f"{c['precision']} rejected" in text and "rejected by vs_champion" in text
    assert "worse" in text and "No drift check of this target's champion is recorded." in text


def test_a_skipped_target_states_its_reason():
    report = json.loads(json.dumps(REPORT))
    report["targets"].append({"family": "fraud_risk", "target": "sm_90", "status": "skipped",
                              "reason": "no worker serves queue gpu_sm_90", "candidates": []})
    page = render(report, "fraud_risk", policy=policy_of(CFG, "fraud_risk"))
    assert "Not gated: sm_90 (no worker serves queue gpu_sm_90)." in _text(page)
    assert page.count("<svg") == 3  # the skipped target draws nothing


def test_bad_input_names_what_the_report_holds():
    with pytest.raises(EvidencePageError, match=r"holds no family 'fx_rates' \(it holds fraud_risk, market_alert, "
                                                r"price_direction\)"):
        render(REPORT, "fx_rates", policy={})
    with pytest.raises(EvidencePageError, match=r"no target 'sm_90' for fraud_risk \(it holds cpu\)"):
        _page("fraud_risk", target="sm_90")
    with pytest.raises(EvidencePageError, match="no 'targets' key"):
        render({"date": "2026-11-13", "accuracy": []}, "fraud_risk", policy={})


@pytest.mark.slow
def test_chromium_renders_the_page_with_the_decision_and_every_candidate(chromium, tmp_path):
    from PIL import Image

    page = tmp_path / "fraud_risk.html"
    page.write_text(_fraud_page())
    shot = chromium.screenshot(page, tmp_path / "page.png", 1280, 1600)
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape == (1600, 1280, 3)
    inked = (img.min(axis=2) < 200).mean()
    assert inked > 0.03, f"screenshot nearly blank: {inked:.1%} of pixels inked"
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # text, plots and colours, not one flat fill
    dom = chromium.dump_dom(page)
    assert dom.count("<svg") == 3
    text = _text(dom)
    assert decision_text(_gate("fraud_risk"), HELD) in text
    rows = re.findall(r'<tr class="cand"><td>(\w+)</td>', dom)
    assert rows == [c["precision"] for c in _gate("fraud_risk")["candidates"]] == ["fp16", "fp32", "int8"]


def test_factory_evidence_renders_a_night_from_its_run_folder(factory_home, tmp_path, capsys):
    from factory_core.fsutil import write_json
    from pipelines.cli import main

    assert main(["evidence", "fraud_risk", "--date", "2026-11-13", "--profile", "smoke", "--no-drift"]) == 2
    err = capsys.readouterr().err
    assert "no gate report at" in err and "runs/2026-11-13/gates/report.json" in err
    write_json(factory_home / "runs" / "2026-11-13" / "gates" / "report.json", REPORT)
    write_json(factory_home / "runs" / "2026-11-13" / "summary.json",
               {"published": [{"family": "fraud_risk", "run_id": "abc123", "versions": [HELD]}]})
    out = tmp_path / "page.html"
    assert main(["evidence", "fraud_risk", "--date", "2026-11-13", "--profile", "smoke", "--no-drift",
                 "--out", str(out)]) == 0
    text = _text(out.read_text())
    assert decision_text(_gate("fraud_risk"), HELD) in text and "run id abc123" in text

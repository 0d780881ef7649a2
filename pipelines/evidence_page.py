"""The evidence page: one self-contained HTML file per family's night and per registered version, rendered from
what the gates recorded (``gates/report.json``), so a person reviewing a promotion in the MLflow UI reads the
evidence rather than a JSON tree.

It shows, per target: the decision and the policy in force; champion vs challenger as a forest plot of the paired
AUC intervals against the non-inferiority margin; each candidate's agreement with FP32 against its bound; the
latency rounds with their intervals and the host's load; why each losing candidate lost; and, where a drift check
of the champion was recorded, its drift state and the label-free performance estimate.

Self-contained means no fetch at all: CSS inline, plots as inline SVG (matplotlib, text kept as text), no script.
MLflow shows ``.html`` artifacts in a sandboxed frame of its artifact view. The figures come from the report only:
nothing is recomputed here, so the page says what the gates decided on.
"""

from __future__ import annotations

import html
import io
import math
from typing import Any

from factory_core.config import FactoryConfig, Family
from factory_core.errors import BadInput

AGREEMENT_CHECKS = ("agree_mean_abs", "agree_p99_abs", "agree_max_abs", "calibration_shift", "decision_flips",
                    "tail_mean_abs", "tail_calibration_shift")
"""The gating agreement statistics (pipelines.gates.agreement_checks), in the page's order."""
DECISION_WORDS = {"pass": "non-inferior", "fail": "worse", "undecided": "undecided"}
COLOURS = {"pass": "#1a7f37", "fail": "#cf222e", "undecided": "#bf8700", "none": "#6e7781"}
RUNNER_COLOURS = ("#0969da", "#8250df", "#1a7f37", "#bf3989", "#953800")


class EvidencePageError(BadInput, ValueError):
    """The report cannot make the page asked for (a family or target it does not hold, a key it lacks)."""


def policy_of(cfg: FactoryConfig, family: str) -> dict[str, Any]:
    """The settings that made tonight's decisions for ``family``, as the page shows them (``gates.*`` names)."""
    g, fam = cfg.gates, cfg.gates.families[Family(family)]
    return {"gates.auto_promote": g.auto_promote, "gates.champion.undecided": g.champion.undecided,
            "gates.champion.refresh_after_days": g.champion.refresh_after_days,
            f"gates.families.{family}.champion_auc_margin": fam.champion_auc_margin,
            "gates.confidence": g.confidence, "gates.bootstrap_resamples": g.bootstrap_resamples,
            "gates.min_events": g.min_events, f"gates.families.{family}.p99_budget_ms": dict(fam.p99_budget_ms),
            "gates.latency_regression_max": g.latency_regression_max,
            "gates.latency_noise_floor_ms": g.latency_noise_floor_ms, "gates.tie_tolerance": g.tie_tolerance}


def render(report: dict[str, Any], family: str, *, policy: dict[str, Any], target: str | None = None,
           registered: list[dict[str, Any]] | None = None, monitoring: dict[str, dict[str, Any] | None] | None = None,
           run: dict[str, str] | None = None) -> str:
    """The page for ``family``'s night (every target) or, with ``target``, for that target's version.

    Args:
        report: the night's gate report (``GateReport.to_xcom()``, i.e. ``gates/report.json``).
        policy: :func:`policy_of` for the config the night ran with.
        registered: the versions publish registered (``Registered`` dicts); None before publication.
        monitoring: per target, the latest drift check of the champion (``DriftResult.to_dict()``), or None.
        run: facts shown in the header (``run_id``, ``git_commit``, ``data_window``).

    Raises:
        EvidencePageError: the report holds no gate for ``family`` (or ``target``); it names what it holds.
    """
    for key in ("date", "targets", "accuracy"):
        if key not in report:
            raise EvidencePageError(f"evidence page: the gate report has no {key!r} key (is it gates/report.json?)")
    gates = [g for g in report["targets"] if g["family"] == family]
    if not gates:
        held = sorted({g["family"] for g in report["targets"]})
        raise EvidencePageError(f"evidence page: the {report['date']} gate report holds no family {family!r} "
                                f"(it holds {', '.join(held) or 'none'})")
    if target is not None:
        held = [g["target"] for g in gates]
        gates = [g for g in gates if g["target"] == target]
        if not gates:
            raise EvidencePageError(f"evidence page: the {report['date']} gate report holds no target {target!r} "
                                    f"for {family} (it holds {', '.join(held)})")
    registered = registered or []
    accuracy = next((a for a in report["accuracy"] if a["family"] == family), None)
    title = f"Evidence · {family}" + (f" · {target}" if target else "") + f" · night {report['date']}"
    facts = [f"profile {report.get('profile', '?')}"] + [f"{k.replace('_', ' ')} {v}" for k, v in (run or {}).items()
                                                         if v]
    gates = sorted(gates, key=lambda g: (g["status"] == "skipped", g["target"]))
    regs = {g["target"]: next((r for r in registered if r["target"] == g["target"]), None) for g in gates}
    body = [f"<h1>{_e(title)}</h1>", f"<p class='meta'>{_e(' · '.join(facts))} · from gates/report.json</p>"]
    gated = [g for g in gates if g["status"] != "skipped"]
    body += [_decision(g, regs[g["target"]]) for g in gated]
    body.append(_skipped([g for g in gates if g["status"] == "skipped"]))
    body.append(_policy(policy))
    body += [_target(g, accuracy, policy, (monitoring or {}).get(g["target"]), family) for g in gated]
    return _document(title, "\n".join(b for b in body if b))


def decision_text(gate: dict[str, Any], registered: dict[str, Any] | None = None) -> str:
    """One sentence: what tonight decided for this family × target, and what the registry did with it."""
    if gate["status"] == "skipped":
        return f"No decision: nothing was gated on {gate['target']} ({gate.get('reason') or 'skipped'})."
    champ = gate.get("champion") or {}
    cv = f"v{champ['registry_version']}" if champ.get("registry_version") else None
    win = next((c for c in gate["candidates"] if c["outcome"] == "selected"), None)
    if win is None:
        keep = f"the champion {cv} stays" if cv else "there is no champion"
        return f"No candidate passed every gate: nothing registered for {gate['target']}; {keep}."
    parts = [f"{win['precision']} selected (lowest batch-1 p99 among the candidates that passed every gate)"]
    vs = _check(win, "vs_champion")
    if vs is not None:
        parts.append(f"{DECISION_WORDS[vs['decision']]} against champion {cv or '?'}" + _interval(vs))
        if vs.get("holds_champion"):
            parts.append("the policy keeps the champion")
        elif vs["decision"] == "undecided":  # gates.champion.undecided: promote, or a champion due for a refresh
            parts.append("the policy lets it replace the champion")
    elif cv:
        parts.append(f"not compared with champion {cv}: {champ.get('reason') or 'not measured'}")
    else:
        parts.append("no champion yet")
    if registered is not None:
        r = registered
        what = f"registered as v{r['registry_version']}"
        what += ", promoted to champion" if r.get("promoted") else " (challenger)"
        note = r.get("note") or ""
        if vs is not None and vs.get("detail"):  # a held champion's note repeats the comparison said above
            note = note.replace(f": {vs['detail']}", "")
        if note:
            what += f": {note}"
        parts.append(what)
    return "; ".join(parts) + "."


def _interval(c: dict[str, Any]) -> str:
    if c.get("value") is None or not c.get("ci"):
        return ""
    lo, hi = c["ci"]
    return f" (champion − challenger AUC {c['value']:+.4f}, CI [{lo:+.4f}, {hi:+.4f}], margin {c['bound']})"


def _check(candidate: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((k for k in candidate["checks"] if k["name"] == name), None)


def _decision(g: dict[str, Any], reg: dict[str, Any] | None) -> str:
    kind = "selected" if any(c["outcome"] == "selected" for c in g["candidates"]) else "rejected"
    return (f"<p class='decision {kind}'><b>Decision, <a href='#{_e(g['target'])}'>{_e(g['target'])}</a>:</b> "
            f"{_e(decision_text(g, reg))}</p>")


def _skipped(gates: list[dict[str, Any]]) -> str:
    """Targets where nothing was gated, in one line grouped by reason (a run narrowed to two targets skips many)."""
    if not gates:
        return ""
    by: dict[str, list[str]] = {}
    for g in gates:
        by.setdefault(g.get("reason") or "skipped", []).append(g["target"])
    parts = "; ".join(f"{', '.join(sorted(ts))} ({why})" for why, ts in by.items())
    return f"<p class='decision skipped'><b>Not gated:</b> {_e(parts)}.</p>"


def _target(g: dict[str, Any], accuracy: dict[str, Any] | None, policy: dict[str, Any], drift: dict[str, Any] | None,
            family: str) -> str:
    out = [f"<section id='{_e(g['target'])}'><h2>{_e(family)} · {_e(g['target'])}</h2>"]
    salt = f"{family}.{g['target']}"
    out += ["<h3>Champion vs challenger</h3>", _champion(g, policy, salt),
            "<h3>Agreement with FP32 (each engine's own outputs on every test window)</h3>",
            _agreement(g, accuracy, salt), "<h3>Latency (batch 1, interleaved rounds)</h3>", _latency(g, salt),
            "<h3>Candidates and why each lost</h3>", _candidates(g), "<h3>Drift and label-free performance</h3>",
            _monitoring(drift), "</section>"]
    return "\n".join(out)


def _policy(policy: dict[str, Any]) -> str:
    rows = " · ".join(f"<code>{_e(k)}</code> = <b>{_e(_plain(v))}</b>" for k, v in policy.items())
    how = ("Under <code>keep_champion</code> only a challenger shown non-inferior (the whole interval of champion − "
           "challenger AUC below the margin) replaces the champion, or one the window cannot decide against once the "
           "champion is <code>refresh_after_days</code> old; a challenger shown worse (the whole interval above the "
           "margin) is rejected under either policy.")
    return f"<div class='policy'><b>Policy in force:</b> {rows}<p class='note'>{how}</p></div>"


def _champion(g: dict[str, Any], policy: dict[str, Any], salt: str) -> str:
    champ = g.get("champion") or {}
    rows = [(c, _check(c, "vs_champion")) for c in g["candidates"]]
    rows = [(c, k) for c, k in rows if k is not None]
    head = ""
    if champ.get("registry_version"):
        head = (f"<p>Champion before tonight: v{_e(champ['registry_version'])} ({_e(champ.get('precision') or '?')}, "
                f"trained for {_e(champ.get('date') or '?')})"
                + ("" if champ.get("comparable") else f", not comparable: {_e(champ.get('reason') or '')}") + ".</p>")
    if not rows:
        why = champ.get("reason") or "no champion measured"
        return head + f"<p class='note'>No champion comparison tonight: {_e(why)}.</p>"
    margin = next((k["bound"] for _, k in rows if k.get("bound") is not None),
                  next((v for k, v in policy.items() if k.endswith("champion_auc_margin")), None))
    table = ["<table><tr><th>candidate</th><th>decision</th><th>champion − challenger AUC</th><th>interval</th>"
             "<th>margin</th><th>n</th><th>detail</th></tr>"]
    for c, k in rows:
        ci = f"[{k['ci'][0]:+.4f}, {k['ci'][1]:+.4f}]" if k.get("ci") else "—"
        table.append(f"<tr><td>{_e(c['precision'])}</td><td class='{k['decision']}'>"
                     f"{_e(DECISION_WORDS[k['decision']])}</td><td>{_num(k.get('value'), '+.4f')}</td><td>{ci}</td>"
                     f"<td>{_num(k.get('bound'))}</td><td>{_num(k.get('n'))}</td><td class='detail'>"
                     f"{_e(k['detail'])}</td></tr>")
    table.append("</table>")
    return head + _forest_svg(rows, margin, salt) + "".join(table)


def _agreement(g: dict[str, Any], accuracy: dict[str, Any] | None, salt: str) -> str:
    cols = "".join(f"<th>{_e(n)}</th>" for n in AGREEMENT_CHECKS)
    table = [f"<table><tr><th>engine</th>{cols}</tr>"]
    for c in g["candidates"]:
        cells = []
        for n in AGREEMENT_CHECKS:
            k = _check(c, f"engine_{n}")
            if k is None:
                cells.append("<td>—</td>")
                continue
            cls = "fail" if k["decision"] == "fail" else ""
            cells.append(f"<td class='{cls}' title='{_e(k['detail'])}'>{_num(k.get('value'), '.2e')} / "
                         f"{_num(k.get('bound'), '.2e')}</td>")
        table.append(f"<tr><td>{_e(c['precision'])}</td>{''.join(cells)}</tr>")
    table.append("</table><p class='note'>Each cell: measured value / bound (bounds per family and precision, "
                 "derived from healthy variants: docs/gates.md).</p>")
    if accuracy:
        graphs = "; ".join(f"{v['precision']} {v['status']}" + (f" ({'; '.join(_failed(v))})" if _failed(v) else "")
                           for v in accuracy["verdicts"])
        table.append(f"<p>The graphs in ONNX Runtime (task <code>accuracy</code>): {_e(graphs)}.</p>")
    return _agreement_svg(g["candidates"], salt) + "".join(table)


def _failed(verdict: dict[str, Any]) -> list[str]:
    return [k["name"] for k in verdict["checks"] if not k.get("ok", True)]


def _latency(g: dict[str, Any], salt: str) -> str:
    champ = g.get("champion") or {}
    runners = [(c["precision"], c.get("benchmark"), c) for c in g["candidates"]]
    if champ.get("benchmark"):
        runners.append((f"champion v{champ.get('registry_version') or '?'}", champ["benchmark"], None))
    table = ["<table><tr><th>runner</th><th>p50 ms</th><th>p99 ms</th><th>p99 over rounds [CI]</th><th>budget</th>"
             "<th>p50 vs champion [CI]</th><th>p99 vs champion [CI]</th><th>rounds × calls</th><th>host load (1 min) "
             "before → after · cpus · process share</th></tr>"]
    for name, b, c in runners:
        if not b:
            table.append(f"<tr><td>{_e(name)}</td>" + "<td>—</td>" * 8 + "</tr>")
            continue
        b1, host = b["batch1"], b["host"]
        budget = _check(c, "p99_budget") if c else None
        rel = [_check(c, f"{s}_vs_champion") if c else None for s in ("p50", "p99")]
        table.append(
            f"<tr><td>{_e(name)}</td><td>{b1['p50_ms']:.3f}</td><td>{b1['p99_ms']:.3f}</td>"
            f"<td class='{budget['decision'] if budget else ''}'>{_ci(budget, '.3f')}</td>"
            f"<td>{_num(budget.get('bound')) if budget else '—'}</td>"
            + "".join(f"<td class='{k['decision'] if k else ''}' title='{_e(k['detail']) if k else ''}'>"
                      f"{_ratio(k)}</td>" for k in rel)
            + f"<td>{host['rounds']} × {host['calls_per_round']}</td><td>{host['loadavg_1m_before']:.2f} → "
              f"{host['loadavg_1m_after']:.2f} · {host['cpus']:g} · {host['process_cpu_share']:.0%}</td></tr>")
    table.append("</table><p class='note'>The champion and every candidate are timed in the same task, each round in "
                 "a fresh random order; a regression rejects only when the lower end of the ratio's interval exceeds "
                 "1 + <code>latency_regression_max</code> and the pooled difference exceeds the noise floor.</p>")
    return _latency_svg(runners, salt) + "".join(table)


def _candidates(g: dict[str, Any]) -> str:
    rows = ["<table><tr><th>candidate</th><th>status</th><th>test AUC</th><th>p99 ms</th><th>outcome</th>"
            "<th>failed checks</th><th>undecided</th></tr>"]
    for c in g["candidates"]:
        fails = [k for k in c["checks"] if not k.get("ok", True)]
        open_ = [k for k in c["checks"] if k["decision"] == "undecided" and k["name"] != "vs_champion"]  # shown above
        cls = "selected" if c["outcome"] == "selected" else ("fail" if c["status"] != "ok" else "")
        rows.append(f"<tr class='cand'><td>{_e(c['precision'])}</td><td class='{cls}'>{_e(c['status'])}</td>"
                    f"<td>{_num(c.get('auc'), '.4f')}</td><td>{_num(c.get('p99_ms'), '.3f')}</td>"
                    f"<td>{_e(_outcome(c))}</td><td>{_items(fails)}</td><td>{_items(open_)}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _outcome(c: dict[str, Any]) -> str:
    """Selected, slower or a tie as the selection said it; a rejection names its checks (their sentences follow)."""
    if c["outcome"].startswith("rejected"):
        return "rejected by " + ", ".join(k["name"] for k in c["checks"] if not k.get("ok", True))
    return c["outcome"]


def _items(checks: list[dict[str, Any]]) -> str:
    if not checks:
        return "—"
    return "<ul>" + "".join(f"<li><code>{_e(k['name'])}</code>: {_e(k['detail'])}</li>" for k in checks) + "</ul>"


def _monitoring(drift: dict[str, Any] | None) -> str:
    if not drift:
        return "<p class='note'>No drift check of this target's champion is recorded.</p>"
    state = drift.get("status", "?")
    out = [f"<p>Latest drift check of champion v{_e(drift.get('champion_version') or '?')} "
           f"({_e(drift.get('since', '?'))} → {_e(drift.get('until', '?'))}, {drift.get('n_current', 0)} served rows "
           f"against {drift.get('n_reference', 0)} reference rows): <b class='{'fail' if state == 'drift' else ''}'>"
           f"{_e(state)}</b>. {_e(drift.get('reason') or '')}</p>"]
    ep = drift.get("episode")
    if ep:
        out.append(f"<p>Drift episode: {'open' if ep.get('open') else 'closed'} since {_e(ep.get('started', '?'))}"
                   + (f", closed {_e(ep['closed_at'])}" if ep.get("closed_at") else "") + ".</p>")
    est = drift.get("estimate")
    if not est:
        out.append("<p class='note'>No label-free estimate: this family's labels are there when the check runs.</p>")
        return "".join(out)
    cal = est.get("calibration") or {}
    rows = "".join(f"<tr><td>{name}</td><td>{_num(est.get(key), '.4f')}</td><td>{_pair(est.get(key + '_interval'))}"
                   f"</td></tr>" for name, key in (("AUC", "auc"), (f"precision at {est['threshold']}", "precision"),
                                                   (f"recall at {est['threshold']}", "recall")))
    trust = "trusted" if est.get("trusted") else "NOT trusted"
    out.append(f"<p>Label-free estimate (CBPE) on {est.get('n', 0)} unlabelled rows, <b>{trust}</b>: calibration "
               f"{_e(cal.get('status', '?'))} (ECE {_num(cal.get('ece'), '.4f')} vs a calibrated model's "
               f"{_num(cal.get('bound'), '.4f')} by chance). {_e(est.get('reason') or cal.get('reason') or '')}</p>"
               f"<table><tr><th>metric</th><th>estimate</th><th>5–95 % sampling spread</th></tr>{rows}</table>")
    return "".join(out)


# --- plots: matplotlib to inline SVG -------------------------------------------------------------------------------


def _svg(fig: Any, salt: str) -> str:
    """The figure as an inline ``<svg>`` element: text kept as text, ids unique per figure (salted)."""
    import matplotlib
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buf.getvalue()
    return "<div class='plot'>" + text[text.index("<svg"):] + "</div>"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _forest_svg(rows: list[tuple[dict[str, Any], dict[str, Any]]], margin: float | None, salt: str) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(rows) + 1.3))
    xs = []
    for i, (c, k) in enumerate(rows):
        colour = COLOURS[k["decision"]]
        if k.get("value") is not None and k.get("ci"):
            lo, hi = k["ci"]
            ax.plot([lo, hi], [i, i], color=colour, lw=2.5)
            ax.plot([k["value"]], [i], "o", color=colour, ms=7)
            xs += [lo, hi]
        else:
            ax.text(0, i, "no interval: " + DECISION_WORDS[k["decision"]], va="center", ha="center", fontsize=8,
                    color=colour)
        ax.text(1.01, i, DECISION_WORDS[k["decision"]], transform=ax.get_yaxis_transform(), va="center",
                fontsize=8, color=colour)
    ax.set_yticks(range(len(rows)), [c["precision"] + (" ★" if c["outcome"] == "selected" else "") for c, _ in rows])
    ax.axvline(0, color="#57606a", lw=1)
    if margin is not None:
        ax.axvline(margin, color=COLOURS["fail"], lw=1.2, ls="--", label=f"margin {margin:g}")
        xs.append(margin)
    hi = max(xs + [0.0]) if xs else 0.05
    lo = min(xs + [0.0]) if xs else -0.05
    pad = 0.15 * max(hi - lo, 0.02)
    ax.set_xlim(lo - pad, hi + pad)
    if margin is not None:
        ax.axvspan(margin, hi + pad, color=COLOURS["fail"], alpha=0.07, lw=0)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.invert_yaxis()
    ax.set_xlabel("champion − challenger AUC, paired on today's test window (right of the margin: worse)")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig, salt + ".forest")


def _agreement_svg(candidates: list[dict[str, Any]], salt: str) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(AGREEMENT_CHECKS) + 1.3))
    floor = 1e-4
    for j, c in enumerate(candidates):
        ys, xs, fails = [], [], []
        for i, n in enumerate(AGREEMENT_CHECKS):
            k = _check(c, f"engine_{n}")
            if k is None or k.get("value") is None or not k.get("bound"):
                continue
            ratio = k["value"] / k["bound"] if math.isfinite(k["value"]) else float("inf")
            ys.append(i + (j - (len(candidates) - 1) / 2) * 0.18)
            xs.append(min(max(ratio, floor), 1e3))
            fails.append(k["decision"] == "fail")
        colour = RUNNER_COLOURS[j % len(RUNNER_COLOURS)]
        ax.scatter(xs, ys, s=30, color=colour, label=c["precision"], zorder=3,
                   edgecolors=[COLOURS["fail"] if f else colour for f in fails], linewidths=1.5)
    ax.axvline(1, color=COLOURS["fail"], ls="--", lw=1.2, label="bound")
    ax.set_xscale("log")
    ax.set_yticks(range(len(AGREEMENT_CHECKS)), AGREEMENT_CHECKS, fontsize=8)
    ax.set_ylim(-0.6, len(AGREEMENT_CHECKS) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel(f"measured ÷ bound (log; 0 drawn at {floor:g}; right of 1 rejects)")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig, salt + ".agreement")


def _latency_svg(runners: list[tuple[str, dict[str, Any] | None, Any]], salt: str) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.0))
    drawn = False
    for j, (name, b, _) in enumerate(runners):
        if not b or not b["batch1"].get("rounds_p99_ms"):
            continue
        colour = "#24292f" if name.startswith("champion") else RUNNER_COLOURS[j % len(RUNNER_COLOURS)]
        p99, p50 = b["batch1"]["rounds_p99_ms"], b["batch1"].get("rounds_p50_ms") or []
        rounds = range(1, len(p99) + 1)
        ax.plot(rounds, p99, "o-", color=colour, lw=1.5, ms=4, label=f"{name} p99")
        if p50:
            ax.plot(range(1, len(p50) + 1), p50, "s:", color=colour, lw=1, ms=3, alpha=0.7, label=f"{name} p50")
        drawn = True
    if not drawn:
        plt.close(fig)
        return "<p class='note'>No latency rounds recorded.</p>"
    ax.set_xlabel("round")
    ax.set_yscale("log")
    ax.set_ylabel("batch-1 latency (ms, log)")
    ax.legend(fontsize=7, frameon=False, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=0.3)
    return _svg(fig, salt + ".latency")


# --- HTML helpers --------------------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1f2328;margin:24px;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:28px}
h3{font-size:15px;margin:18px 0 6px}.meta,.note{color:#57606a;font-size:12px}
table{border-collapse:collapse;margin:6px 0;font-size:12px}td,th{border:1px solid #d0d7de;padding:3px 6px;
text-align:left;vertical-align:top}th{background:#f6f8fa}td.detail{max-width:480px}ul{margin:0;padding-left:16px}
.decision{margin:6px 0;padding:8px 12px;border-radius:6px;border-left:6px solid}.decision.selected{background:#dafbe1;
border-color:#1a7f37}.decision.rejected{background:#ffebe9;border-color:#cf222e}.decision.skipped{background:#f6f8fa;
border-color:#6e7781}td.pass,td.selected{color:#1a7f37;font-weight:600}td.fail,b.fail{color:#cf222e;font-weight:600}
td.undecided{color:#9a6700;font-weight:600}.plot svg{max-width:100%;height:auto}summary{font-weight:600;cursor:pointer}
div.policy{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:8px 12px;font-size:12px}
.policy p{margin:4px 0 0}nav a{margin-right:12px}
"""


def _document(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _plain(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, dict):
        return ", ".join(f"{k}: {x}" for k, x in v.items())
    return "none" if v is None else str(v)


def _num(v: Any, fmt: str = "g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—" if v is None else _e(v)
    return format(v, fmt)


def _pair(v: Any) -> str:
    return f"[{v[0]:.4f}, {v[1]:.4f}]" if v else "—"


def _ci(k: dict[str, Any] | None, fmt: str) -> str:
    if not k or k.get("value") is None:
        return "—"
    ci = f" [{format(k['ci'][0], fmt)}, {format(k['ci'][1], fmt)}]" if k.get("ci") else ""
    return f"{format(k['value'], fmt)}{ci}"


def _ratio(k: dict[str, Any] | None) -> str:
    """A ``*_vs_champion`` check holds ratio − 1: shown as the ratio."""
    if not k or k.get("value") is None:
        return _e(k["decision"]) if k else "—"
    ci = f" [{k['ci'][0] + 1:.3f}, {k['ci'][1] + 1:.3f}]" if k.get("ci") else ""
    return f"{k['value'] + 1:.3f}×{ci}"

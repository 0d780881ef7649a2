"""Human-readable reports of a night: terminal tables."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_nightly_summary(summary: dict[str, Any], console=None) -> None:
    """Print one row per family: test metrics of the trained model and its ONNX export."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 200)
    trigger = summary.get("trigger") or "schedule"
    table = Table(title=f"Nightly {summary['date']} · profile {summary['profile']} · test-split metrics (FP32)"
                        + ("" if trigger in ("schedule", "manual") else f" · triggered by {trigger}"))
    for col in ("family", "status", "train n", "epochs", "device", "AUC", "PR-AUC [base]", "accuracy", "alerts@thr",
                "precision@thr", "recall@thr", "Sharpe gross", "Sharpe net [trades]", "hit rate", "ONNX max|Δ|",
                "train s"):
        table.add_column(col, justify="left" if col in ("family", "status", "device") else "right")
    for row in summary["families"]:
        t, e, m = row["train"], row["export"] or {}, row["train"]["metrics"]
        table.add_row(
            row["family"], str(row["status"]), str(t["n_train"]), str(t["epochs"]), t["device"],
            _fmt(m.get("auc")), f"{_fmt(m.get('pr_auc'))} [{_fmt(m.get('positive_rate'))}]",
            _fmt(m.get("accuracy")), _alerts(m), _fmt(m.get("precision")), _fmt(m.get("recall")),
            _fmt(m.get("sharpe"), 1),
            f"{_fmt(m.get('net_sharpe'), 1)} [{int(m['net_trades'])}]" if "net_sharpe" in m else "—",
            _fmt(m.get("hit_rate")), f"{e['max_abs_err']:.1e}" if e else "—",
            _fmt(t["seconds"], 1),
        )
    console.print(table)
    print_variants(summary, console)
    print_engines(summary, console)


def _alerts(m: dict[str, Any]) -> str:
    """Decisions at the family threshold on the test split: how many, of how many windows."""
    if "alert_rate" not in m or "n" not in m:
        return "—"
    return f"{round(m['alert_rate'] * m['n'])}/{int(m['n'])}"


def print_variants(summary: dict[str, Any], console) -> None:
    """One row per family x precision: ONNX Runtime validation accuracy against FP32, and what stayed high-precision."""
    from rich.table import Table

    table = Table(title="Precision variants · ONNX Runtime CPU · validation split")
    for col in ("family", "precision", "AUC", "ΔAUC vs fp32", "accuracy", "INT8 coverage / kept FP32", "build s"):
        table.add_column(col, justify="left" if col in ("family", "precision", "INT8 coverage / kept FP32") else "right")
    for row in summary["families"]:
        vs = row.get("variants")
        if not vs:
            continue
        base = next(v for v in vs["variants"] if v["precision"] == "fp32")["val_metrics"]["auc"]
        for v in vs["variants"]:
            m = v["val_metrics"]
            if v["precision"] == "int8":
                q, nq = v["coverage"].get("quantized", {}), v["coverage"].get("not_quantized", {})
                note = f"Q/DQ on {q or 'nothing'}; FP32: {nq or 'none'}" + (" (cached)" if v["cache_hit"] else "")
            else:
                note = ", ".join(v["kept_fp32"]) if v["kept_fp32"] else ""
            table.add_row(row["family"], v["precision"], _fmt(m["auc"], 4), f"{m['auc'] - base:+.4f}",
                          _fmt(m["accuracy"], 4), note, _fmt(v["seconds"], 1))
        for prec, why in sorted((vs.get("not_offered") or {}).items()):
            table.add_row(row["family"], prec, "—", "—", "—", f"[yellow]not offered[/]: {why}", "—")
    console.print(table)


def print_engines(summary: dict[str, Any], console) -> None:
    """One row per family x target x precision: built (backend, seconds, sha256) or why not."""
    from rich.table import Table

    table = Table(title="Engines · family × target × precision")
    for col in ("family", "target", "precision", "status", "backend", "build s", "engine sha256 / reason"):
        table.add_column(col, justify="right" if col == "build s" else "left", overflow="fold")
    styles = {"ok": "green", "skipped": "yellow", "failed": "red"}
    skipped: dict[tuple[str, str], list[str]] = {}
    for row in summary["families"]:
        for e in row.get("engines") or []:
            if e["status"] == "skipped":
                skipped.setdefault((e["target"], e["backend"], e["reason"]), []).append(
                    f"{row['family']}/{e['precision']}")
                continue
            status = f"[{styles.get(e['status'], 'white')}]{e['status']}[/]"
            backend = f"{e['backend']} {e['backend_version']}".strip()
            detail = e["engine_sha256"][:16] if e["status"] == "ok" else e["reason"]
            table.add_row(row["family"], e["target"], e["precision"], status, backend,
                          _fmt(e["seconds"], 2) if e["status"] == "ok" else "—", detail)
    for (target, backend, reason), which in sorted(skipped.items()):
        fams = sorted({w.split("/")[0] for w in which})
        precs = sorted({w.split("/")[1] for w in which})
        who = fams[0] if len(fams) == 1 else f"{len(which)} builds"
        table.add_row(who, target, precs[0] if len(precs) == 1 else "all", "[yellow]skipped[/]", backend, "—",
                      reason)
    console.print(table)


def _short_outcome(c: dict[str, Any]) -> str:
    """The table's word for a candidate's outcome; the report JSON has the full sentence."""
    o = c["outcome"]
    if o == "selected":
        return "★ selected"
    if o.startswith("rejected"):
        return "rejected: " + ", ".join(k["name"] for k in c["checks"] if not k["ok"])
    if o.startswith("tie"):
        return "tie → higher precision"
    return "slower"


def plot_accuracy_vs_p99(report: dict[str, Any], dest) -> None:
    """Test AUC against batch-1 p99 for every engine: one row of panels per target, one panel per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    gates = [g for g in report["targets"] if g["candidates"]]
    targets = sorted({g["target"] for g in gates})
    families = sorted({g["family"] for g in gates})
    fig, axes = plt.subplots(max(len(targets), 1), max(len(families), 1), squeeze=False,
                             figsize=(4.5 * max(len(families), 1), 3.6 * max(len(targets), 1)))
    from factory_core.precisions import PRECISIONS

    markers = {n: p.marker for n, p in PRECISIONS.items()}
    for g in gates:
        ax = axes[targets.index(g["target"])][families.index(g["family"])]
        for c in g["candidates"]:
            if c["p99_ms"] is None or c["auc"] is None:
                continue
            ok, won = c["status"] == "ok", c["outcome"] == "selected"
            ax.scatter(c["p99_ms"], c["auc"], marker=markers.get(c["precision"], "x"), s=110 if won else 70,
                       facecolors=("tab:green" if won else "tab:blue") if ok else "none",
                       edgecolors="tab:red" if not ok else "k", linewidths=1.5)
            ax.annotate(c["precision"] + (" ★" if won else ""), (c["p99_ms"], c["auc"]), fontsize=8,
                        xytext=(5, 4), textcoords="offset points")
        ax.set_title(f"{g['family']} · {g['target']}", fontsize=10)
        ax.set_xlabel("p99, batch 1 (ms)")
        ax.set_ylabel("test AUC")
        ax.margins(x=0.3, y=0.3)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.4f"))
        ax.grid(alpha=0.3)
    fig.suptitle("Accuracy vs latency per target (★ selected · hollow red = rejected)", fontsize=11)
    fig.tight_layout()
    fig.savefig(dest, dpi=100)
    plt.close(fig)


def print_gates(report: dict[str, Any], console=None) -> None:
    """One row per family x target x precision: accuracy, parity, latency and the verdict."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)
    acc = {(a["family"], v["precision"]): v for a in report["accuracy"] for v in a["verdicts"]}
    table = Table(title=f"Gates {report['date']} · each engine's own outputs vs FP32 PyTorch on the test split · "
                        f"latency interleaved with the champion")
    for col in ("family", "target", "prec", "AUC", "ΔAUC [CI]", "mean|Δp|", "flips", "p50 b1", "p99 b1 [CI]",
                "p99 opt", "champion p99", "vs champion", "outcome"):
        table.add_column(col, justify="left" if col in ("family", "target", "prec", "outcome", "vs champion")
                         else "right", overflow="fold")
    for g in report["targets"]:
        if not g["candidates"]:
            table.add_row(g["family"], g["target"], "—", *["—"] * 9, f"[yellow]{g['status']}[/]")
            continue
        champ = g.get("champion") or {}
        for c in g["candidates"]:
            v = acc.get((g["family"], c["precision"]), {})
            m = v.get("metrics", {})
            checks = {k["name"]: k for k in c["checks"]}
            auc = checks.get("engine_auc_drop", {})
            agree = checks.get("engine_agree_mean_abs", {})
            flips = checks.get("engine_decision_flips", {})
            p99 = checks.get("p99_budget", {})
            vs = checks.get("vs_champion", {})
            b = c.get("benchmark") or {}
            style = "green" if c["outcome"] == "selected" else ("red" if c["status"] != "ok" else "white")
            table.add_row(
                g["family"], g["target"], c["precision"], _fmt(c.get("auc") or m.get("auc"), 4),
                (f"{-auc['value']:+.4f} [{-auc['ci'][1]:+.4f}, {-auc['ci'][0]:+.4f}]" if auc.get("ci") else
                 (auc.get("decision") or "—")),
                _fmt(agree.get("value"), 5) if agree.get("value") is not None else "—",
                f"{flips['value']:.2%}" if flips.get("value") is not None else "—",
                _fmt(b.get("batch1", {}).get("p50_ms"), 3),
                (f"{p99['value']:.3f} [{p99['ci'][0]:.3f}, {p99['ci'][1]:.3f}]" if p99.get("ci") else
                 _fmt(c.get("p99_ms"), 3)),
                _fmt(b.get("opt", {}).get("p99_ms"), 3),
                _fmt(champ.get("p99_ms"), 3) if champ.get("comparable") else "—",
                vs.get("decision", "—") if vs else "—", f"[{style}]{_short_outcome(c)}[/]")
    console.print(table)


def print_published(summary: dict[str, Any], console) -> None:
    """One row per registered engine: MLflow version, aliases set, where the store holds it, and why the champion
    was kept when it was (a promotion withheld is never silent)."""
    from rich.table import Table

    table = Table(title="Registered in MLflow and pushed to the engine store")
    for col in ("model", "version", "precision", "aliases", "store", "note"):
        table.add_column(col, overflow="fold")
    withheld = []
    for pub in summary.get("published") or []:
        for v in pub["versions"]:
            aliases = "challenger" + (", champion" if v["promoted"] else "")
            note = v.get("note") or ""
            table.add_row(f"{pub['family']}.{v['target']}", v["registry_version"], v["precision"], aliases,
                          v["store_uri"], f"[yellow]{note}[/]" if note else "")
            if note and not v["promoted"] and "is already the champion" not in note:
                withheld.append(f"{pub['family']}.{v['target']} v{v['registry_version']}: {note}")
    console.print(table)
    for line in withheld:
        console.print(f"[bold yellow]NOT PROMOTED[/] {line}")


def print_drift(result: dict[str, Any], console=None) -> None:
    """One drift check: per-column table (drifted first) and the verdict."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    head = (f"drift {result['family']}/{result['target']} · champion v{result['champion_version']} · "
            f"{result['since']} → {result['until']} · reference {result['n_reference']} rows, "
            f"current {result['n_current']} rows")
    if result["status"] in ("insufficient", "no_champion"):
        console.print(f"{head}\n[yellow]{result['status']}[/yellow]: {result['reason']}")
        return
    table = Table(title=head)
    for col in ("column", "method", "score", "threshold", "drifted"):
        table.add_column(col, justify="right" if col in ("score", "threshold") else "left")
    rows = [*result["columns"], *([result["prediction"]] if result.get("prediction") else [])]
    for c in sorted(rows, key=lambda c: (not c["drifted"], c["column"])):
        table.add_row(c["column"], c["method"], _fmt(c["score"], 4), _fmt(c["threshold"], 3),
                      "[red]yes[/red]" if c["drifted"] else "no")
    console.print(table)
    verdict = "[red]DRIFT[/red]" if result["status"] == "drift" else "[green]no drift[/green]"
    console.print(f"{verdict}: {result['drifted_columns']}/{len(result['columns'])} feature columns drifted "
                  f"(share {result['drift_share']:.2f}); prediction "
                  f"{'drifted' if result.get('prediction') and result['prediction']['drifted'] else 'stable'}")
    if result.get("triggered"):
        console.print(f"[bold]retraining requested[/bold] (new drift episode): {result['reason']}")
    elif result.get("episode") and result["episode"].get("open"):
        console.print(f"drift episode open since {result['episode']['started']}: retraining was already requested")
    if result.get("html_uri"):
        console.print(f"report: {result['html_uri']}")

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
        console.width = max(console.width, 150)
    table = Table(title=f"Nightly {summary['date']} · profile {summary['profile']} · test-split metrics (FP32)")
    for col in ("family", "status", "train n", "epochs", "device", "AUC", "accuracy", "precision@thr",
                "recall@thr", "Sharpe", "hit rate", "ONNX max|Δ|", "train s"):
        table.add_column(col, justify="left" if col in ("family", "status", "device") else "right")
    for row in summary["families"]:
        t, e, m = row["train"], row["export"] or {}, row["train"]["metrics"]
        table.add_row(
            row["family"], str(row["status"]), str(t["n_train"]), str(t["epochs"]), t["device"],
            _fmt(m.get("auc")), _fmt(m.get("accuracy")), _fmt(m.get("precision")), _fmt(m.get("recall")),
            _fmt(m.get("sharpe"), 1), _fmt(m.get("hit_rate")), f"{e['max_abs_err']:.1e}" if e else "—",
            _fmt(t["seconds"], 1),
        )
    console.print(table)
    print_variants(summary, console)
    print_engines(summary, console)


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
    console.print(table)


def print_engines(summary: dict[str, Any], console) -> None:
    """One row per family x target x precision: built (backend, seconds, sha256) or why not."""
    from rich.table import Table

    table = Table(title="Engines · family × target × precision")
    for col in ("family", "target", "precision", "status", "backend", "build s", "engine sha256 / reason"):
        table.add_column(col, justify="right" if col == "build s" else "left", overflow="fold")
    styles = {"ok": "green", "skipped": "yellow", "failed": "red"}
    for row in summary["families"]:
        for e in row.get("engines") or []:
            status = f"[{styles.get(e['status'], 'white')}]{e['status']}[/]"
            backend = f"{e['backend']} {e['backend_version']}".strip()
            detail = e["engine_sha256"][:16] if e["status"] == "ok" else e["reason"]
            table.add_row(row["family"], e["target"], e["precision"], status, backend,
                          _fmt(e["seconds"], 2) if e["status"] == "ok" else "—", detail)
    console.print(table)

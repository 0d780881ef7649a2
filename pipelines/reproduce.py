"""A night's record, and ``factory reproduce``: the night re-run from it and compared artifact by artifact.

``ingest`` writes ``runs/<date>/record.json``: the code (git commit, and a hash of uncommitted changes to the
packages), the resolved config (its seeds with it), library versions, the run's params, and the sha256 of every
lake partition the night read. :func:`reproduce` checks the running code and the lake against it (a change is
refused, naming what changed), re-runs the night through the same ``dag.test`` path as ``factory nightly`` into a
scratch home, then compares in DAG stage order. Each artifact is:

- ``identical``: the same sha256;
- ``equivalent``: other bytes, the same computation: a graph or checkpoint whose outputs on the recorded test
  windows, or an engine whose outputs on its recorded canary sample, are within the precision's serving-canary
  tolerance (:data:`factory_core.precisions.PRECISIONS`); a table with the same rows; a gate with every decision
  the same;
- ``different``, and every later artifact of that family is named as following from the first;
- ``skipped``: this host cannot build it (a TensorRT target here), with the reason. Never identical.

TensorRT builds are not bit-identical in general (kernel autotuning picks by timing), which is why an engine
is equivalent on its canary sample rather than identical by hash. Latency is not reproduced: a gate's timing
checks and its champion comparison (the champion of that night, in the registry of that night) are left out of
the comparison and the selection, decided by latency, is reported beside it. See docs/operations.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from factory_core.config import FactoryConfig, Family
from factory_core.contracts import Plan
from factory_core.errors import BadInput
from factory_core.families import spec
from factory_core.fsutil import fetch, get_json, put_json
from factory_core.precisions import PRECISIONS, REFERENCE

log = logging.getLogger(__name__)

CODE_DIRS = ("factory_core", "pipelines", "model_registry", "monitoring", "dags")
"""What a night runs: a change here (committed or not) is a change of code."""
VERSIONED = ("numpy", "pandas", "pyarrow", "torch", "onnx", "onnxruntime", "nvidia-modelopt", "scikit-learn",
             "model-factory")
TIMING_CHECKS = frozenset({"p99_budget", "p50_vs_champion", "p99_vs_champion"})
"""Gate checks decided on latency: a property of the host at that hour, not of the artifact."""
CHAMPION_CHECKS = frozenset({"vs_champion"})
"""Against the registry's champion of that night, which a scratch registry does not hold."""
GOLDEN_ROWS = 2048
"""Recorded test windows a graph or checkpoint is run on when its bytes differ."""


class ReproduceRefused(BadInput):
    """The night cannot be reproduced as recorded: no record, other code, or a lake partition that changed."""


# ---------------------------------------------------------------------------------------------------- the record


def code_identity() -> dict[str, str]:
    """The code a night runs: ``commit`` of the checkout (for people), ``tree``: a sha256 over the git trees of
    :data:`CODE_DIRS` at that commit (a commit that touches only docs or tests keeps it), and ``changes``: a sha256
    over uncommitted changes to them (tracked diffs and untracked files), ``""`` when clean. Outside a git checkout
    (an installed wheel) ``commit`` and ``tree`` are ``unknown``: only ``model-factory``'s version names the code."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout if out.returncode == 0 else ""

    top = git("rev-parse", "--show-toplevel").strip()
    if not top or Path(top).resolve() != root:  # a venv inside some other repository is not this code's checkout
        return {"commit": "unknown", "tree": "unknown", "changes": ""}
    commit = git("rev-parse", "HEAD").strip() or "unknown"
    trees = git("rev-parse", *(f"HEAD:{d}" for d in CODE_DIRS))
    tree = hashlib.sha256(trees.encode()).hexdigest() if trees else "unknown"
    diff = git("diff", "HEAD", "--", *CODE_DIRS)
    untracked = sorted(git("ls-files", "--others", "--exclude-standard", "--", *CODE_DIRS).split())
    if not diff and not untracked:
        return {"commit": commit, "tree": tree, "changes": ""}
    h = hashlib.sha256(diff.encode())
    for name in untracked:
        h.update(name.encode() + b"\0" + (root / name).read_bytes())
    return {"commit": commit, "tree": tree, "changes": h.hexdigest()}


def library_versions() -> dict[str, str]:
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def record_night(cfg: FactoryConfig, p: Plan, partitions: dict[str, str]) -> str:
    """Write the night's record (``runs/<date>/record.json``); ``partitions``: lake key → sha256 of its file."""
    record = {"date": p.date, "profile": cfg.profile, "recorded_at": dt.datetime.now(dt.timezone.utc).isoformat(),
              "plan": p.to_xcom(), "code": code_identity(), "versions": library_versions(),
              "seeds": {"data.seed": cfg.data.seed, "train.seed": cfg.train.seed},
              "config": cfg.model_dump(mode="json"),
              "lake": {"uri": cfg.lake_uri, "partitions": dict(sorted(partitions.items()))}}
    return put_json(cfg.run_layout(p.date).record(), record)


# ------------------------------------------------------------------------------------------- before the re-run


def read_night(cfg: FactoryConfig, date: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The night's record and summary; :class:`ReproduceRefused` naming what is missing."""
    run = cfg.run_layout(date)
    record = get_json(run.record())
    if record is None:
        raise ReproduceRefused(f"night {date}: no {Path(run.record()).name} under {run.uri} (a night records its "
                               f"inputs at ingest; nights run before that cannot be reproduced)")
    summary = get_json(run.summary())
    if summary is None:
        raise ReproduceRefused(f"night {date}: no summary.json under {run.uri}: the night did not finish, so there "
                               f"is nothing to compare against")
    return record, summary


def check_code(recorded: dict[str, str], running: dict[str, str], allow_change: bool) -> list[str]:
    """Warnings; :class:`ReproduceRefused` when the code differs and ``allow_change`` is false. The code is the
    packages' tree plus uncommitted changes: another commit that leaves them as they were is the same code."""
    def name(c: dict[str, str]) -> str:
        return c["commit"][:12] + (f" with uncommitted changes {c['changes'][:12]}" if c.get("changes") else "")

    if recorded.get("commit", "unknown") == "unknown":
        return ["the record names no code commit (the night ran outside a git checkout): the code is not pinned"]
    key = ("tree", "changes") if recorded.get("tree", "unknown") != "unknown" else ("commit", "changes")
    if all(recorded.get(k) == running.get(k) for k in key):
        return []
    text = f"the night ran code {name(recorded)}, this is {name(running)}"
    if not allow_change:
        raise ReproduceRefused(f"{text}: check out the recorded commit to reproduce it (or pass "
                               f"--allow-code-change to compare anyway)")
    return [f"{text} (--allow-code-change): a difference may come from the code"]


def check_lake(record: dict[str, Any], endpoint: str | None = None) -> int:
    """Every recorded partition is there with its recorded sha256; else :class:`ReproduceRefused` naming it."""
    from .data import lake

    uri = record["lake"]["uri"]
    for key, digest in record["lake"]["partitions"].items():
        dataset, date_kv, symbol_kv = key.split("/")
        part = lake.Partition(dataset, date_kv.split("=", 1)[1], symbol_kv.split("=", 1)[1])
        if not lake.exists(uri, part):
            raise ReproduceRefused(f"lake partition {key} is gone from {uri}: the night's input cannot be read")
        now = lake.partition_sha256(uri, part)
        if now != digest:
            raise ReproduceRefused(f"lake partition {key} changed since the night (sha256 {now[:12]}, recorded "
                                   f"{digest[:12]}): the input differs, so would every artifact")
    return len(record["lake"]["partitions"])


def version_warnings(recorded: dict[str, str], running: dict[str, str]) -> list[str]:
    return [f"{k} {running.get(k, 'absent')} here, {v} in the night" for k, v in sorted(recorded.items())
            if running.get(k) != v]


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """``train.seed=99`` → ``{"train": {"seed": 99}}`` (values read as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        path = [k for k in key.strip().split(".") if k]
        if not eq or not path:
            raise ReproduceRefused(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. train.seed=99")
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = yaml.safe_load(value)
    return out


def reproduction_config(record: dict[str, Any], scratch: Path, sets: dict[str, Any]) -> dict[str, Any]:
    """The recorded config, redirected into ``scratch``: its own runs, registry, store, caches and metrics; the lake
    read as recorded (``data.source: lake``: nothing is simulated or written there). ``sets`` last."""
    from factory_core.config import _deep_merge

    cfg = _deep_merge(record["config"], {
        "home": str(scratch), "runs": {"root": None},
        "data": {"source": "lake", "lake_uri": record["lake"]["uri"]},
        "registry": {"tracking_uri": None, "store_uri": None},
        "monitoring": {"prediction_log_uri": None, "textfile_dir": None}})
    return _deep_merge(cfg, sets)


@contextlib.contextmanager
def scratch_environment(scratch: Path, config_file: Path) -> Any:
    """The night's tasks read their config from ``$FACTORY_CONFIG`` and ``FACTORY__*``: here the recorded file
    alone, so this shell's overrides are set aside (and named) for the re-run."""
    ignored = sorted(k for k in os.environ if k.startswith("FACTORY__") or k == "FACTORY_PROFILE")
    saved = {k: os.environ[k] for k in (*ignored, "FACTORY_HOME", "FACTORY_CONFIG") if k in os.environ}
    for k in ignored:
        del os.environ[k]
    os.environ.update({"FACTORY_HOME": str(scratch), "FACTORY_CONFIG": str(config_file)})
    try:
        yield ignored
    finally:
        for k in ("FACTORY_HOME", "FACTORY_CONFIG"):
            os.environ.pop(k, None)
        os.environ.update(saved)


# ------------------------------------------------------------------------------------------------ the comparison

IDENTICAL, EQUIVALENT, DIFFERENT, SKIPPED = "identical", "equivalent", "different", "skipped"


@dataclass
class Row:
    stage: str
    """The DAG task that made it: ``features``, ``train``, ``engine_cpu``, ``gate_cpu``…"""
    family: str
    artifact: str
    verdict: str
    detail: str = ""
    follows: str = ""
    """For a ``different`` row after the first: the earlier different stage it follows from."""


def stage_order(targets: list[str]) -> list[str]:
    """The DAG's stages, upstream first (engines and accuracy both follow variants; gates follow both)."""
    return ["ingest", "features", "train", "export", "variants", *(f"engine_{t}" for t in targets), "accuracy",
            *(f"gate_{t}" for t in targets)]


def _sha(path: Path) -> str:
    from factory_core.fsutil import sha256_file

    return sha256_file(path)


def _within(out: Any, expected: Any, atol: float, rtol: float) -> tuple[bool, float, int]:
    """The serving canary's rule, ``|out - expected| <= atol + rtol * |expected|``: (ok, max |Δ|, rows outside)."""
    import numpy as np

    out, expected = np.asarray(out, np.float64), np.asarray(expected, np.float64)
    if out.shape != expected.shape:
        return False, float("inf"), len(expected)
    err = np.abs(out - expected)
    bad = ~(err <= atol + rtol * np.abs(expected))
    return not bad.any(), float(np.nanmax(err)) if err.size else 0.0, int(bad.reshape(len(bad), -1).any(axis=1).sum())


def _tolerance_row(stage: str, family: str, artifact: str, out: Any, expected: Any, precision: str,
                   what: str) -> Row:
    from factory_core.precisions import precision as precision_spec

    atol, rtol = precision_spec(precision).canary
    ok, worst, bad = _within(out, expected, atol, rtol)
    tol = f"{precision} canary atol {atol:g} + rtol {rtol:g}"
    if ok:
        return Row(stage, family, artifact, EQUIVALENT, f"bytes differ; max |Δ| {worst:.2e} on {what}, within {tol}")
    return Row(stage, family, artifact, DIFFERENT, f"max |Δ| {worst:.2e} on {what}: {bad} rows beyond {tol}")


class Compare:
    """The recorded night against its reproduction, read through their summaries and gate reports."""

    def __init__(self, old_run: str, new_run: str, workdir: Path, families: list[str], targets: list[str]):
        from factory_core.layout import RunLayout

        self.runs = RunLayout(old_run), RunLayout(new_run)
        old_summary, new_summary = (get_json(r.summary()) for r in self.runs)
        self.old, self.new, self.work = old_summary, new_summary, workdir
        self.families, self.targets = families, targets
        self.old_report = get_json(old_summary["gate_report"]) if old_summary.get("gate_report") else None
        self.new_report = get_json(new_summary["gate_report"]) if new_summary.get("gate_report") else None
        self._golden: dict[str, Any] = {}

    def _local(self, uri: str) -> Path:
        return fetch(uri, self.work)

    def _row(self, summary: dict[str, Any], family: str) -> dict[str, Any] | None:
        return next((r for r in summary["families"] if r["family"] == family), None)

    def golden(self, family: str) -> Any:
        """The recorded test windows (at most :data:`GOLDEN_ROWS`): the inputs a graph or checkpoint is run on."""
        if family not in self._golden:
            from .datasets import load_splits

            row = self._row(self.old, family)
            x = load_splits(self._local(row["train"]["splits_uri"]))["test"].x
            self._golden[family] = x[:GOLDEN_ROWS]
        return self._golden[family]

    def files(self, stage: str, family: str, artifact: str, old_uri: str, new_uri: str, same_content=None) -> Row:
        """sha256 first; then ``same_content(old_path, new_path) -> Row`` when the bytes differ."""
        a, b = self._local(old_uri), self._local(new_uri)
        if _sha(a) == _sha(b):
            return Row(stage, family, artifact, IDENTICAL, f"sha256 {_sha(a)[:12]}")
        if same_content is None:
            return Row(stage, family, artifact, DIFFERENT, f"sha256 {_sha(b)[:12]}, recorded {_sha(a)[:12]}")
        return same_content(a, b)

    # -- stages ------------------------------------------------------------------------------------------------

    def features(self) -> list[Row]:
        import pandas as pd

        def same_rows(a: Path, b: Path, name: str) -> Row:
            x, y = pd.read_parquet(a), pd.read_parquet(b)
            if x.equals(y):
                return Row("features", "", name, EQUIVALENT, f"bytes differ; the same {len(x)} rows and values")
            return Row("features", "", name, DIFFERENT, f"{len(y)} rows ({len(x)} recorded), values differ")

        used = {spec(f).source for f in self.families}
        rows = []
        for name, source in (("market.parquet", "market"), ("fraud.parquet", "transactions")):
            if source not in used:
                continue
            old, new = (f"{r.features()}/{name}" for r in self.runs)
            rows.append(self.files("features", "", name, old, new, lambda a, b, n=name: same_rows(a, b, n)))
        return rows

    def train(self, family: str, old: dict[str, Any], new: dict[str, Any]) -> list[Row]:
        import numpy as np

        from .models import load_model
        from .train import predict

        def same_splits(a: Path, b: Path) -> Row:
            with np.load(a) as x, np.load(b) as y:
                same = sorted(x.files) == sorted(y.files) and all(np.array_equal(x[k], y[k]) for k in x.files)
            return Row("train", family, "splits.npz", EQUIVALENT if same else DIFFERENT,
                       "bytes differ; the same arrays" if same else "the val/test/calibration windows differ")

        def same_outputs(a: Path, b: Path) -> Row:
            x = self.golden(family)
            return _tolerance_row("train", family, "model.pt", predict(load_model(b), x), predict(load_model(a), x),
                                  "fp32", f"{len(x)} recorded test windows")

        return [self.files("train", family, "splits.npz", old["train"]["splits_uri"], new["train"]["splits_uri"],
                           same_splits),
                self.files("train", family, "model.pt", old["train"]["checkpoint_uri"],
                           new["train"]["checkpoint_uri"], same_outputs)]

    def _graph_rows(self, stage: str, family: str, artifact: str, old_uri: str, new_uri: str, precision: str) -> Row:
        from model_registry.runners import infer_batched, open_runner

        def same_outputs(a: Path, b: Path) -> Row:
            x = self.golden(family)
            out = [infer_batched(open_runner(p, "onnxruntime", threads=0), x, 1024) for p in (b, a)]
            return _tolerance_row(stage, family, artifact, out[0], out[1], precision,
                                  f"{len(x)} recorded test windows")

        return self.files(stage, family, artifact, old_uri, new_uri, same_outputs)

    def export(self, family: str, old: dict[str, Any], new: dict[str, Any]) -> list[Row]:
        if not old.get("export") or not new.get("export"):
            return [Row("export", family, "model.fp32.onnx", DIFFERENT, "no export in one of the nights")]
        return [self._graph_rows("export", family, "model.fp32.onnx", old["export"]["onnx_uri"],
                                 new["export"]["onnx_uri"], "fp32")]

    def variants(self, family: str, old: dict[str, Any], new: dict[str, Any]) -> list[Row]:
        ov = {v["precision"]: v for v in old["variants"]["variants"]}
        nv = {v["precision"]: v for v in new["variants"]["variants"]}
        rows = []
        for prec in (p for p in PRECISIONS if p != REFERENCE and (p in ov or p in nv)):  # fp32: the export's
            name = f"model.{prec}.onnx"
            if prec not in ov or prec not in nv:
                rows.append(Row("variants", family, name, DIFFERENT,
                                f"{'only the reproduction' if prec in nv else 'only the night'} offers {prec}"))
                continue
            rows.append(self._graph_rows("variants", family, name, ov[prec]["onnx_uri"], nv[prec]["onnx_uri"], prec))
        a, b = old["variants"]["calibration_sha256"], new["variants"]["calibration_sha256"]
        rows.append(Row("variants", family, "calibration set", IDENTICAL if a == b else DIFFERENT,
                        f"array sha256 {b[:12]}" + ("" if a == b else f", recorded {a[:12]}")))
        return rows

    def engines(self, family: str, old: dict[str, Any], new: dict[str, Any]) -> list[Row]:
        ne = {(e["target"], e["precision"]): e for e in new["engines"]}
        rows: list[Row] = []
        for e in sorted(old["engines"], key=lambda e: (self.targets.index(e["target"]) if e["target"] in self.targets
                                                       else -1, list(PRECISIONS).index(e["precision"]))):
            if e["target"] not in self.targets:
                continue
            stage, artifact = f"engine_{e['target']}", f"{e['precision']} engine"
            n = ne.get((e["target"], e["precision"])) or {"status": "missing", "reason": "no record of it"}
            if n["status"] != "ok":  # this host cannot build it: never identical
                rows.append(Row(stage, family, artifact, SKIPPED, n["reason"] + (
                    "" if e["status"] == "ok" else " (the night skipped it too)")))
                continue
            if e["status"] != "ok":
                rows.append(Row(stage, family, artifact, SKIPPED, f"nothing to compare: the night skipped it "
                                                                  f"({e['reason']})"))
                continue
            rows.append(self._engine(stage, family, artifact, e, n))
        return _fold_skipped(rows)

    def _engine(self, stage: str, family: str, artifact: str, old: dict[str, Any], new: dict[str, Any]) -> Row:
        import numpy as np

        from factory_core.contracts import read_manifest
        from model_registry.runners import infer_batched, open_engine

        if old["engine_sha256"] == new["engine_sha256"]:
            return Row(stage, family, artifact, IDENTICAL, f"sha256 {new['engine_sha256'][:12]}")
        a, b = self._local(old["engine_dir"]), self._local(new["engine_dir"])
        recorded = read_manifest(a)
        if recorded.canary is None:
            return Row(stage, family, artifact, DIFFERENT, "bytes differ and the night recorded no canary sample")
        with np.load(a / recorded.canary.file) as z:
            x, expected = z["inputs"], z["expected"]
        manifest = read_manifest(b)
        engine = open_engine(b, manifest)
        try:
            prof = manifest.inputs[0].profile or {}
            out = infer_batched(engine, x, int(prof["max"][0]) if prof.get("max") else len(x))
        finally:
            engine.close()
        ok, worst, bad = _within(out, expected, recorded.canary.atol, recorded.canary.rtol)
        tol = f"canary atol {recorded.canary.atol:g} + rtol {recorded.canary.rtol:g}"
        if ok:
            return Row(stage, family, artifact, EQUIVALENT,
                       f"bytes differ; max |Δ| {worst:.2e} on the {len(x)} recorded canary rows, within {tol}")
        return Row(stage, family, artifact, DIFFERENT,
                   f"max |Δ| {worst:.2e} on the recorded canary sample: {bad} of {len(x)} rows beyond {tol}")

    def accuracy(self, family: str) -> list[Row]:
        import numpy as np

        old = next((a for a in (self.old_report or {}).get("accuracy", []) if a["family"] == family), None)
        new = next((a for a in (self.new_report or {}).get("accuracy", []) if a["family"] == family), None)
        if old is None or new is None:
            return [Row("accuracy", family, "verdicts", DIFFERENT, "no accuracy report in one of the nights")]

        def same_outputs(a: Path, b: Path) -> Row:
            return _tolerance_row("accuracy", family, "FP32 reference outputs", np.load(b), np.load(a), "fp32",
                                  "every test window")

        rows = [self.files("accuracy", family, "FP32 reference outputs", old["reference_uri"], new["reference_uri"],
                           same_outputs)]
        ov = {v["precision"]: v for v in old["verdicts"]}
        nv = {v["precision"]: v for v in new["verdicts"]}
        rows.append(_decisions("accuracy", family, "verdicts", {p: v["checks"] for p, v in ov.items()},
                               {p: v["checks"] for p, v in nv.items()},
                               {p: v["status"] for p, v in ov.items()}, {p: v["status"] for p, v in nv.items()}))
        return rows

    def gates(self, family: str) -> list[Row]:
        def gate(report: dict[str, Any] | None, target: str) -> dict[str, Any] | None:
            return next((g for g in (report or {}).get("targets", []) if g["family"] == family
                         and g["target"] == target), None)

        rows = []
        for t in self.targets:
            old, new = gate(self.old_report, t), gate(self.new_report, t)
            stage = f"gate_{t}"
            if old is None or new is None or "skipped" in (old["status"], new["status"]):
                why = (new or {}).get("reason") or (old or {}).get("reason") or "no gate"
                rows.append(Row(stage, family, "candidates", SKIPPED, why))
                continue
            oc = {c["precision"]: c for c in old["candidates"]}
            nc = {c["precision"]: c for c in new["candidates"]}
            row = _decisions(stage, family, "candidates", {p: c["checks"] for p, c in oc.items()},
                             {p: c["checks"] for p, c in nc.items()})
            picked = f"selected {new['selected']}" + ("" if new["selected"] == old["selected"] else
                                                       f" (the night: {old['selected']}; chosen on latency)")
            row.detail = f"{row.detail}; {picked}"
            rows.append(row)
        return rows

    def rows(self, progress=None) -> list[Row]:
        """Every comparison, upstream first, each reported to ``progress(row)`` as it is made."""
        out: list[Row] = []

        def add(rows: list[Row]) -> None:
            for r in rows:
                out.append(r)
                if progress:
                    progress(r)

        add(self.features())
        per_family: list[tuple[str, Any]] = [("train", self.train), ("export", self.export),
                                             ("variants", self.variants), ("engines", self.engines)]
        for family in self.families:
            old, new = self._row(self.old, family), self._row(self.new, family)
            if old is None or new is None:
                add([Row("train", family, "family", DIFFERENT, "missing from " + ("the reproduction" if old else
                                                                                  "the night"))])
                continue
            for _, fn in per_family:
                add(fn(family, old, new))
            add(self.accuracy(family))
            add(self.gates(family))
        return out


def _fold_skipped(rows: list[Row]) -> list[Row]:
    """One row for a target's engines skipped for the same reason: ``fp32, fp16, int8 engines``."""
    out: list[Row] = []
    precisions: list[list[str]] = []
    for r in rows:
        prev = out[-1] if out else None
        if prev and r.verdict == prev.verdict == SKIPPED and (prev.stage, prev.detail) == (r.stage, r.detail):
            precisions[-1].append(r.artifact.split()[0])
            continue
        out.append(Row(**asdict(r)))
        precisions.append([r.artifact.split()[0]])
    for r, names in zip(out, precisions):
        if len(names) > 1:
            r.artifact = ", ".join(names) + " engines"
    return out


def _comparable(checks: list[dict[str, Any]]) -> dict[str, tuple[str, Any]]:
    return {c["name"]: (c["decision"], c.get("value")) for c in checks
            if c["name"] not in TIMING_CHECKS | CHAMPION_CHECKS}


def _decisions(stage: str, family: str, artifact: str, old: dict[str, list], new: dict[str, list],
               old_status: dict[str, str] | None = None, new_status: dict[str, str] | None = None) -> Row:
    """Checks per precision: identical when every decision and value is the same, equivalent when every decision
    is, else different naming the first that moved."""
    if sorted(old) != sorted(new):
        return Row(stage, family, artifact, DIFFERENT, f"precisions {sorted(new)}, the night {sorted(old)}")
    n, values_moved = 0, []
    for prec in sorted(old):
        a, b = _comparable(old[prec]), _comparable(new[prec])
        if old_status is not None and old_status[prec] != new_status[prec]:
            return Row(stage, family, artifact, DIFFERENT, f"{prec}: {new_status[prec]}, the night "
                                                           f"{old_status[prec]}")
        for name in sorted(set(a) | set(b)):
            n += 1
            if name not in a or name not in b or a[name][0] != b[name][0]:
                got = b.get(name, ("absent",))[0]
                was = a.get(name, ("absent",))[0]
                return Row(stage, family, artifact, DIFFERENT, f"{prec} {name}: {got}, the night {was}")
            if a[name][1] != b[name][1]:
                values_moved.append(f"{prec} {name}")
    if not values_moved:
        return Row(stage, family, artifact, IDENTICAL, f"{n} checks: same decisions and values")
    return Row(stage, family, artifact, EQUIVALENT,
               f"{n} checks: same decisions; values moved in {len(values_moved)} (first: {values_moved[0]})")


def mark_followers(rows: list[Row], order: list[str]) -> str | None:
    """Return the first differing stage (``None`` when nothing differs), and mark what follows from it.

    A family's origin is its own first ``different`` row, or a shared stage's (``features``) before it. Every later
    row of the family that is not identical (or skipped) is ``different``, naming the origin: an engine or a gate
    made from a different model is not equivalent to the night's, whatever its tolerance says."""
    rank = {s: i for i, s in enumerate(order)}
    different = [r for r in rows if r.verdict == DIFFERENT]
    if not different:
        return None
    shared = min((r for r in different if not r.family), key=lambda r: rank[r.stage], default=None)
    for fam in {r.family for r in rows if r.family}:
        mine = [r for r in different if r.family == fam]
        origin = min(mine, key=lambda r: rank[r.stage], default=None)
        if shared is not None and (origin is None or rank[shared.stage] < rank[origin.stage]):
            origin = shared
        if origin is None:
            continue
        name = origin.stage if not origin.family else f"{origin.stage}[{origin.family}]"
        for r in rows:
            if r.family == fam and rank[r.stage] > rank[origin.stage] and r.verdict in (DIFFERENT, EQUIVALENT):
                r.verdict, r.follows = DIFFERENT, name
    return min(different, key=lambda r: rank[r.stage]).stage


# ---------------------------------------------------------------------------------------------------- the command


def reproduce(cfg: FactoryConfig, date: str, scratch: Path, planted: list[str], allow_code_change: bool,
              families: list[str] | None, console: Any) -> int:
    """Check, re-run and compare one recorded night; print progress and the table. ``planted``: ``KEY=VALUE``
    changes to the recorded config. Returns the exit code: 0 when every artifact is identical, equivalent or
    skipped, 1 when one differs or the re-run failed."""
    import yaml
    from rich.markup import escape

    from factory_core.config import FactoryConfig as Config

    from .cli.nightly import run_nightly

    sets = parse_sets(planted)
    record, _ = read_night(cfg, date)
    warnings = check_code(record["code"], code_identity(), allow_code_change)
    n_parts = check_lake(record)
    warnings += version_warnings(record.get("versions", {}), library_versions())
    recorded_families = record["plan"]["families"]
    if families:
        unknown = sorted(set(families) - set(recorded_families))
        if unknown:
            raise ReproduceRefused(f"--families {unknown}: the night of {date} trained {recorded_families}")
    families = [f for f in recorded_families if not families or f in families]
    targets = record["plan"]["targets"]
    if scratch.exists() and any(scratch.iterdir()):
        raise ReproduceRefused(f"--scratch {scratch} is not empty: a reproduction needs a fresh home")
    scratch.mkdir(parents=True, exist_ok=True)
    layered = reproduction_config(record, scratch, sets)
    try:
        repro = Config.model_validate(layered)
    except Exception as exc:
        raise ReproduceRefused(f"the recorded config does not load here{' with --set' if sets else ''}: {exc}") \
            from None
    config_file = scratch / "factory.yaml"
    config_file.write_text(yaml.safe_dump(repro.model_dump(mode="json"), sort_keys=False))

    console.rule(f"factory reproduce · {date}")
    code = record["code"]
    console.print(f"record: code {code['commit'][:12]}{' + changes ' + code['changes'][:12] if code['changes'] else ''}"
                  f" · seeds {', '.join(f'{k} {v}' for k, v in record['seeds'].items())} · profile {record['profile']}"
                  f" · {n_parts} lake partitions, sha256 as recorded")
    if sets:
        console.print(f"[yellow]planted[/yellow] over the recorded config: {escape(', '.join(planted))}")
    for w in warnings:
        console.print(f"[yellow]warning[/yellow]: {escape(w)}")
    console.print(f"re-running into {scratch} (families {', '.join(families)}; targets {', '.join(targets)})")
    with scratch_environment(scratch, config_file) as ignored:
        if ignored:
            console.print(f"[yellow]warning[/yellow]: ignored for the re-run (the record's config rules): "
                          f"{', '.join(ignored)}")
        rc = run_nightly(repro, date, str(config_file), families, targets, tables=False)
    if rc != 0:
        console.print(f"[red]the reproduction night failed[/red] (exit {rc}); nothing compared")
        return 1
    console.rule("comparing, upstream first (each artifact alone; the table names what follows from what)")
    cmp = Compare(cfg.run_layout(date).uri, repro.run_layout(date).uri, scratch / "compare", families, targets)
    rows = [Row("ingest", "", f"{n_parts} lake partitions", IDENTICAL, "sha256 checked before the re-run")]
    rows += cmp.rows(lambda r: console.print(escape(f"  {r.verdict:<10} {r.stage:<14} {r.family:<16} {r.artifact}")))
    order = stage_order(targets)
    rows.sort(key=lambda r: (order.index(r.stage), families.index(r.family) if r.family else -1))
    first = mark_followers(rows, order)
    print_table(rows, date, console)
    counts = {v: sum(r.verdict == v for r in rows) for v in (IDENTICAL, EQUIVALENT, DIFFERENT, SKIPPED)}
    verdict = ("reproduced" if first is None else f"NOT reproduced: first differing stage {first}")
    console.print(escape(f"{verdict} · " + ", ".join(f"{n} {v}" for v, n in counts.items() if n)))
    put_json(str(scratch / "reproduce.json"), {"date": date, "record": record["code"], "planted": planted,
                                               "warnings": warnings, "first_different": first,
                                               "rows": [asdict(r) for r in rows]})
    console.print(f"report: {scratch / 'reproduce.json'}")
    return 0 if first is None else 1


def print_table(rows: list[Row], date: str, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    if not console.is_terminal:
        console.width = max(console.width, 200)
    colour = {IDENTICAL: "green", EQUIVALENT: "cyan", DIFFERENT: "red", SKIPPED: "yellow"}
    table = Table(title=f"Reproduction of {date}, upstream first")
    for col in ("stage", "family", "artifact", "verdict", "detail"):
        table.add_column(col, overflow="fold")
    for r in rows:  # names like train[fraud_risk] are text, not rich markup
        detail = f"follows from {r.follows}: {r.detail}" if r.follows else r.detail
        table.add_row(r.stage, r.family or "—", escape(r.artifact), f"[{colour[r.verdict]}]{r.verdict}[/]",
                      escape(detail))
    console.print(table)

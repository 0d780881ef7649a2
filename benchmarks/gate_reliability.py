"""Gate reliability: false rejects on healthy nights, and what catches each planted fault.

    python benchmarks/gate_reliability.py [--nights 10] [--home DIR] [--derive 5] [--plants-only]

``--derive K`` first runs K healthy nights up to the accuracy gate on seeds (500…) and dates (2026-10-01…)
of their own and prints the agreement of every healthy variant with FP32 PyTorch (|Δp| mean / p99 / max,
calibration shift, flip rate, the same on the tail) per family and precision, and the bounds derived from it
(the family's largest healthy value over the seeds × 3, rounded up), then each family's ``agreement=`` to paste
into its spec in ``factory_core/families.py``: the defaults of ``gates.families.<family>.agreement``
(docs/gates.md).

Then N healthy smoke nights on consecutive dates in one home (so each night meets the previous night's
champion), one lake (one data seed: its days join up) and a training seed per night: the stages run in this process as the DAG runs them, on the
``cpu`` target. It prints every rejection with its reason, the false-reject rate per precision, the
champion decision and the promotions per family, and the wall time the gates add to a night.

Then the planted suite on the last night's run: each fault beside its healthy control, run through the
same gate functions, with the check that caught it. Not a test: it prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from factory_core.config import Family, load_config
from factory_core.contracts import Status
from factory_core.families import spec
from factory_core.precisions import PRECISIONS, REFERENCE
from pipelines import faults, stages

FACTOR = 3.0
FLIP_FLOOR = 0.002
"""The reference precision's flip-rate bound: its |Δp| bounds are floored at the export's parity tolerance."""
STATS = [("mean_abs", "agree_mean_abs"), ("p99_abs", "agree_p99_abs"), ("max_abs", "agree_max_abs"),
         ("bias", "agree_bias"), ("flip_rate", "agree_flip_rate"), ("tail_mean_abs", "tail_agree_mean_abs"),
         ("tail_bias", "tail_agree_bias")]


def _cfg(home: Path, seed: int, train_seed: int | None = None):
    over = {"data": {"seed": seed}, "engines": {"targets": [{"name": "cpu", "required": True}]}}
    if train_seed is not None:
        over["train"] = {"seed": train_seed}
    return load_config(profile="smoke", env={"FACTORY_HOME": str(home)}, overrides=over)


def _through_variants(cfg, date: str):
    p = stages.plan(cfg, date)
    fs = stages.build_features(cfg, p, stages.ingest(cfg, p))
    out, trained = [], []
    for fam in p.families:
        tr = stages.train(cfg, p, fs, fam)
        ex = stages.export(cfg, p, tr)
        trained.append((tr, ex))
        out.append(stages.make_variants(cfg, p, ex))
    return p, out, trained


def night(cfg, date: str) -> dict:
    """One night in this process: the DAG's stages in its order, on the cpu target."""
    p, vss, trained = _through_variants(cfg, date)
    accs, gated, gate_s = [], [], 0.0
    for vs in vss:
        built = {t.name: [stages.build_engine(cfg, p, vs, prec, t.name) for prec in t.precisions]
                 for t in cfg.declared_targets()}
        t0 = time.perf_counter()
        acc = stages.gate_accuracy(cfg, p, vs)
        accs.append(acc)
        gated += [stages.gate_target(cfg, p, acc, built[t.name], t.name) for t in cfg.declared_targets()]
        gate_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    report = stages.gate_report(cfg, p, accs, gated)
    gate_s += time.perf_counter() - t0
    published = [stages.publish(cfg, p, tr, ex, report) for tr, ex in trained]
    return {"plan": p, "variants": vss, "accuracy": accs, "gated": gated, "published": published, "gate_s": gate_s,
            "trained": trained}


def derive(base: Path, k: int) -> None:
    rows = collections.defaultdict(list)  # (family, precision) -> the healthy variants' metrics, one per seed
    for i in range(k):
        home = base / f"derive-{i}"
        cfg = _cfg(home, 500 + i)  # seeds and dates of their own: the validation nights never see them
        date = (dt.date(2026, 10, 1) + dt.timedelta(days=i)).isoformat()
        p, vss, trained = _through_variants(cfg, date)
        for vs in vss:
            acc = stages.gate_accuracy(cfg, p, vs)
            for v in acc.verdicts:
                rows[(vs.family, v.precision)].append(v.metrics)
        shutil.rmtree(home, ignore_errors=True)
    floor = {name: FLIP_FLOOR if name == "flip_rate" else cfg.export.parity_atol for name, _ in STATS}
    derived: dict[str, dict[str, dict[str, float]]] = {}
    print(f"\n## Agreement of healthy variants with FP32 PyTorch ({k} seeds, smoke test splits)\n")
    print(f"Each cell: the largest healthy value over the seeds → the bound (× {FACTOR:g}, rounded up; "
          f"{REFERENCE} floored at the export parity tolerance).\n")
    print("| family | precision | " + " | ".join(name for name, _ in STATS) + " |")
    print("|---|---|" + "---|" * len(STATS))
    for fam in cfg.enabled_families:
        derived[fam] = {}
        for prec in PRECISIONS:
            items = rows.get((fam, prec))
            if not items:  # not offered (no layer quantized): the spec's bounds stay
                derived[fam][prec] = dict(spec(fam).agreement[prec])
                print(f"| {fam} | {prec} | " + " | ".join("—" for _ in STATS) + " |")
                continue
            cells, bounds = [], {}
            for name, key in STATS:
                largest = max(abs(m.get(key, 0.0)) for m in items)
                bound = _round_up(max(largest * FACTOR, 1e-6 if name != "flip_rate" else 0.0))
                bounds[name] = max(bound, floor[name])  # no precision is held tighter than FP32 itself
                cells.append(f"{largest:.2e} → {bounds[name]:.2g}")
            derived[fam][prec] = bounds
            print(f"| {fam} | {prec} | " + " | ".join(cells) + " |")
    print("\n## To paste: each family's `agreement=` in its FamilySpec (factory_core/families.py)\n")
    for fam, per_prec in derived.items():
        print(f"# {fam}" + ("" if all(rows.get((fam, p)) for p in PRECISIONS) else
                            "  (— above: not measured, the spec's current bounds kept)"))
        print("agreement={")
        for prec, bounds in per_prec.items():
            args = [f"{n}={bounds[n]:.2g}" for n, _ in STATS]
            print(f'    "{prec}": dict(' + ", ".join(args[:4]) + ",\n" + " " * 17 + ", ".join(args[4:]) + "),")
        print("},")


def _round_up(x: float) -> float:
    """Up to two significant digits (1.04e-2 → 1.1e-2)."""
    if x <= 0:
        return 0.0
    e = np.floor(np.log10(x)) - 1
    return float(np.ceil(round(x / 10 ** e, 9)) * 10 ** e)


def healthy(base: Path, n: int, seed_base: int, start: dt.date) -> tuple[Path, dict]:
    """N healthy nights. A candidate rejected by any check but the champion comparison is a false reject (the
    data and the build are healthy); a challenger shown worse than the champion is the champion policy at work,
    counted apart, with its interval."""
    home = base / "healthy"
    shutil.rmtree(home, ignore_errors=True)
    false_rejects, counts = [], collections.Counter()
    promotions, decided, worse = collections.Counter(), collections.Counter(), []
    history = collections.defaultdict(list)  # family -> (date, champion decision or None, a selection passed)
    gate_s, last = [], None
    print(f"\n## {n} healthy nights (smoke profile, one home and one lake of data seed {seed_base}, training seeds "
          f"{seed_base}–{seed_base + n - 1}, from "
          f"{start})\n")
    precs = "/".join(PRECISIONS)
    print(f"| night | family | variants {precs} | engines {precs} (all but the champion check) | "
          "challenger vs champion (AUC, champion − challenger) | selected | promoted |")
    print("|---|---|---|---|---|---|---|")
    for i in range(n):
        date = (start + dt.timedelta(days=i)).isoformat()
        cfg = _cfg(home, seed_base, train_seed=seed_base + i)  # one world (a lake's days join up), fresh training
        t0 = time.perf_counter()
        out = night(cfg, date)
        gate_s.append((out["gate_s"], time.perf_counter() - t0))
        promoted = {(v.target, f.family): v.promoted for f in out["published"] for v in f.versions}
        accs = {a.family: a.model_dump(mode="json") for a in out["accuracy"]}
        for g in out["gated"]:
            verdicts = {v["precision"]: v for v in accs[g.family]["verdicts"]}
            for v in verdicts.values():
                counts[("variant", v["precision"])] += 1
                if v["status"] != Status.OK:
                    false_rejects.append((date, g.family, v["precision"], "accuracy",
                                          "; ".join(c["detail"] for c in v["checks"] if not c["ok"])))
            engines, champ = {}, None
            for c in g.model_dump(mode="json")["candidates"]:
                counts[("engine", c["precision"])] += 1
                own = [k for k in c["checks"] if not k["ok"] and k["name"] != "vs_champion"]
                engines[c["precision"]] = "rejected" if own else "ok"
                if own:
                    false_rejects.append((date, g.family, c["precision"], f"gate_{g.target}",
                                          "; ".join(k["detail"] for k in own)))
                vc = next((k for k in c["checks"] if k["name"] == "vs_champion"), None)
                if vc and (champ is None or c["precision"] == "fp32"):
                    champ = vc
            history[g.family].append((date, champ["decision"] if champ is not None else None, g.selected is not None))
            if champ is not None:
                decided[(g.family, champ["decision"])] += 1
                if champ["decision"] == "fail":
                    worse.append((date, g.family, champ["detail"]))
            was = promoted.get((g.target, g.family), False)
            promotions[g.family] += int(was)
            vtext = "/".join(verdicts[p]["status"] if p in verdicts else "—" for p in PRECISIONS)
            etext = "/".join(engines.get(p, "—") for p in PRECISIONS)
            ctext = "— (no champion yet)"
            if champ is not None:
                word = {"pass": "non-inferior", "fail": "worse", "undecided": "undecided"}[champ["decision"]]
                ci = champ.get("ci")
                ctext = word + (f" {champ['value']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else
                                " (too few positives)")
            print(f"| {date} | {g.family} | {vtext} | {etext} | {ctext} | {g.selected or '—'} | "
                  f"{'yes' if was else 'no'} |")
        last = (cfg, out)
    print("\n### False rejects per precision (healthy data, healthy builds)\n")
    print("| precision | variants rejected (accuracy) | engines rejected (gate_cpu, champion check aside) |")
    print("|---|---|---|")
    for prec in PRECISIONS:
        rv = sum(1 for r in false_rejects if r[2] == prec and r[3] == "accuracy")
        re_ = sum(1 for r in false_rejects if r[2] == prec and r[3] != "accuracy")
        print(f"| {prec} | {rv} of {counts[('variant', prec)]} | {re_} of {counts[('engine', prec)]} |")
    print("\n### Every false reject\n")
    for r in false_rejects or [("—", "—", "—", "—", "none")]:
        print(f"- {r[0]} {r[1]} {r[2]} at {r[3]}: {r[4]}")
    print("\n### Champion decisions and promotions\n")
    policy = last[0].gates.champion.undecided
    print(f"| family | promoted nights | non-inferior | undecided (policy: {policy}) | worse (champion stays) |")
    print("|---|---|---|---|---|")
    for f in Family:
        print(f"| {f.value} | {promotions[f.value]} of {n} | {decided[(f.value, 'pass')]} | "
              f"{decided[(f.value, 'undecided')]} | {decided[(f.value, 'fail')]} |")
    for w in worse:
        print(f"- {w[0]} {w[1]}: {w[2]}")
    policies(history, n)
    gs = np.array(gate_s)
    print(f"\nGates (accuracy + gate_cpu + report) took {gs[:, 0].mean():.1f} s of a {gs[:, 1].mean():.1f} s night "
          f"on average ({gs[:, 0].min():.1f}–{gs[:, 0].max():.1f} s).")
    return home, {"cfg": last[0], "out": last[1]}


def policies(history: dict, n: int) -> None:
    """What each ``gates.champion`` policy would have done with the same nights' decisions.

    Replayed on the decisions the run made against its actual champion (an approximation: under another policy
    the champion, and so a later comparison, could differ). A night is eligible when a candidate passed every
    other gate (skill included); ``worse`` never promotes; ``non-inferior`` always does; ``undecided`` is the
    policy's call."""
    rules = {"promote": lambda age: True, "keep_champion": lambda age: False,
             "keep_champion, refresh_after_days=7": lambda age: age is not None and age >= 7}
    print("\n### The `undecided` policy, replayed on these nights\n")
    print("| family | undecided nights | " + " | ".join(f"promotions: {r}" for r in rules) +
          " | oldest champion (days): " + " / ".join(rules) + " |")
    print("|---|---|" + "---|" * (len(rules) + 1))
    for fam, rows in history.items():
        und = sum(1 for _, d, _ in rows if d == "undecided")
        moves, oldest = [], []
        for rule in rules.values():
            champ_day, count, worst = None, 0, 0
            for date, d, eligible in rows:
                day = dt.date.fromisoformat(date)
                age = (day - champ_day).days if champ_day else None
                promote = eligible and (d is None or d == "pass" or (d == "undecided" and rule(age)))
                if promote:
                    champ_day, count = day, count + 1
                worst = max(worst, (day - champ_day).days if champ_day else 0)
            moves.append(f"{count} of {n}")
            oldest.append(str(worst))
        print(f"| {fam} | {und} of {len(rows)} | " + " | ".join(moves) + " | " + " / ".join(oldest) + " |")


def _caught(checks: list[dict]) -> str:
    names = [c["name"] for c in checks if not c["ok"]]
    return ", ".join(names) if names else "NOT CAUGHT"


def plants(base: Path, last: dict) -> None:
    """Each fault on a copy of the last healthy night's run, through the gate functions, beside its control."""
    from model_registry.runners import infer_batched, open_runner
    from pipelines.datasets import load_splits
    from pipelines.engines.base import build_engine as build
    from pipelines.engines.base import onnx_io
    from pipelines.gates import accuracy_verdict, tail_mask
    from pipelines.models import positive_probability

    cfg, out = last["cfg"], last["out"]
    # The plants meet a champion that is the last night's own selection, in a registry of their own: every
    # control beside a plant is then the same model as the champion, and only the plant can fail.
    ctl = base / "plants"
    shutil.rmtree(ctl, ignore_errors=True)
    cfg = cfg.model_copy(update={"registry": cfg.registry.model_copy(update={
        "tracking_uri": f"sqlite:///{ctl / 'mlflow.db'}", "store_uri": str(ctl / "store")})})
    old = out["plan"].run_uri
    gated = [faults.gate_planted(cfg, out["plan"], vs, "cpu", ctl / "control") for vs in out["variants"][:1]]
    p0 = faults.rebase(out["plan"], old, str(ctl / "control" / "run"))
    moved = [faults.rebase(vs, old, p0.run_uri) for vs in out["variants"]]
    for vs in moved[1:]:
        folder = Path(p0.run_uri) / vs.family / "engines" / "cpu"
        built = [stages.EngineResult(family=vs.family, precision=d.name, target="cpu", backend="onnxruntime",
                                     status=stages.Status.OK, engine_dir=str(d)) for d in sorted(folder.iterdir())]
        gated.append(stages.gate_target(cfg, p0, stages.gate_accuracy(cfg, p0, vs), built, "cpu"))
    report = stages.gate_report(cfg, p0, [], gated)
    for tr, ex in out["trained"]:
        stages.publish(cfg, p0, faults.rebase(tr, old, p0.run_uri), faults.rebase(ex, old, p0.run_uri), report)
    out = {**out, "plan": p0, "variants": moved}
    rows = []

    def gate_with(family: str, precision: str, plant) -> tuple[str, str]:
        """Plant into a copy of the run; returns (planted candidate's outcome, its controls' statuses)."""
        vs = next(v for v in out["variants"] if v.family == family)
        with tempfile.TemporaryDirectory(dir=base) as work:
            g = faults.gate_planted(cfg, p0, vs, "cpu", Path(work), plant)
        got = {c.precision: c for c in g.candidates}
        ctrl = ", ".join(f"{c.precision} {c.status}" for k, c in got.items() if k != precision)
        return f"{got[precision].status}: {_caught([c.model_dump() for c in got[precision].checks])}", ctrl

    def with_engine(family: str, precision: str, fn):
        return faults.in_engine(family, "cpu", precision, fn)

    test = {f: load_splits(Path(p0.run_uri) / f / "train" / "splits.npz")["test"] for f in p0.families}
    for delta in (0.02, 0.04, 0.10):
        res = gate_with("market_alert", "int8",
                        with_engine("market_alert", "int8", lambda s, d, k=delta: faults.shift_outputs(s, d, k)))
        rows.append((f"market_alert int8 engine, outputs +{delta}", *res))
    tx = test["market_alert"].x
    thr = faults.rare_threshold(tx, 2, 0.002)
    hit = int((tx[..., 2].reshape(len(tx), -1).max(axis=1) > thr).sum())
    res = gate_with("market_alert", "fp32",
                    with_engine("market_alert", "fp32", lambda s, d: faults.nan_on_rare_inputs(s, d, 2, thr)))
    rows.append((f"market_alert fp32 engine, NaN on rare inputs ({hit} of {len(tx)} test windows, "
                 f"{hit / len(tx):.2%})", *res))
    res = gate_with("price_direction", "fp32",
                    with_engine("price_direction", "fp32", lambda s, d: faults.slow_down(s, d)))
    rows.append(("price_direction fp32 engine, slow (extra matmuls)", *res))

    def other_graph(run: Path) -> None:  # the fp32 engine rebuilt from the fp16 graph
        from factory_core.availability import host_facts
        from pipelines import engines
        from pipelines.engines.base import BuildSpec

        fam = Family.FRAUD_RISK
        src = run / fam / "variants" / "model.fp16.onnx"
        tgt = cfg.declared_target("cpu")
        ins, outs, prof = onnx_io(src, fam, cfg.families[fam])
        spec = BuildSpec(family=fam, version="planted", precision="fp32", target=tgt, onnx=src, profile=prof,
                         options=cfg.engines.onnxruntime.model_dump(), calibration_sha256=None)
        engine_dir = run / fam / "engines" / "cpu" / "fp32"
        shutil.rmtree(engine_dir)
        build(engines.builder_for("onnxruntime", cfg.engine_store), spec, engine_dir, ins, outs, host_facts())
    res = gate_with("fraud_risk", "fp32", other_graph)
    rows.append(("fraud_risk fp32 engine built from another graph (the fp16 one)", *res))

    # variant level: INT8 graphs with one perturbed scale, and a tail collapse, through the accuracy verdict
    fam = Family.PRICE_DIRECTION
    base_int8 = Path(p0.run_uri) / fam / "variants" / "model.int8.onnx"
    ref = np.load(Path(p0.run_uri) / fam / "accuracy" / "reference.npy")
    t = test[fam]
    bounds, thr_f = cfg.gates.families[fam], cfg.families[fam].threshold
    scales = faults.activation_scales(base_int8)
    caught = 0
    for name in scales:
        for factor in (16.0, 1 / 16):
            with tempfile.TemporaryDirectory(dir=base) as d:
                bad = faults.scale_one(base_int8, Path(d) / "bad.onnx", name, factor)
                prob = infer_batched(open_runner(bad, "onnxruntime", threads=0), t.x, 4096)
            v = accuracy_verdict(fam, "int8", t, ref, prob, bounds, thr_f, cfg.gates)
            dp = np.abs(np.asarray(positive_probability(fam, prob)) - np.asarray(positive_probability(fam, ref)))
            caught += v.status is Status.REJECTED
            rows.append((f"price_direction int8, scale {name} ×{factor:g} (mean |Δp| {np.nanmean(dp):.4f}, "
                         f"max {np.nanmax(dp):.3f})", f"{v.status}: {_caught([c.model_dump() for c in v.checks])}",
                         "—"))
    collapsed = ref.copy()
    tail = tail_mask(fam, t)
    collapsed[tail] = 0.5
    v = accuracy_verdict(fam, "int8", t, ref, collapsed, bounds, thr_f, cfg.gates)
    rows.append((f"price_direction, outputs 0.5 on the {int(tail.sum())} extreme-move windows",
                 f"{v.status}: {_caught([c.model_dump() for c in v.checks])}", "—"))
    base_prob = infer_batched(open_runner(base_int8, "onnxruntime", threads=0), t.x, 4096)
    ok = accuracy_verdict(fam, "int8", t, ref, base_prob, bounds, thr_f, cfg.gates)
    rows.append(("control: the healthy price_direction int8 graph", f"{ok.status}", "—"))
    print("\n## Planted faults\n")
    print("| plant | planted candidate | healthy controls beside it |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    print(f"\nINT8 scale corruptions caught: {caught} of {2 * len(scales)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nights", type=int, default=10)
    ap.add_argument("--derive", type=int, default=0, help="seeds for the agreement-bound derivation first")
    ap.add_argument("--home", type=Path, default=None, help="working directory (default: a temporary one)")
    ap.add_argument("--seed-base", type=int, default=200, help="data seed of the first healthy night")
    ap.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2026, 11, 11),
                    help="date of the first healthy night")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = args.home or Path(tempfile.mkdtemp(prefix="gate-reliability-"))
    base.mkdir(parents=True, exist_ok=True)
    if args.derive:
        derive(base, args.derive)
    if args.nights:
        _, last = healthy(base, args.nights, args.seed_base, args.start)
        plants(base, last)


if __name__ == "__main__":
    main()

"""What a trainer host buys: the `train` stage's training loop per family, CUDA with AMP against this host's CPU.

Runs :func:`pipelines.train.fit_epoch` (the loop ``train_family`` runs: AdamW + cosine, clipping, float16 autocast
and the grad scaler on CUDA) on the real models of :mod:`pipelines.models` at a profile's sizes (model width and
depth, window, ``train.batch_size``, ``train.max_train_samples`` training windows), each epoch followed by the
prediction pass over a validation split (``train.split``'s share beside the training one), as a night does.
The data are synthetic arrays of the family's input shape: an epoch's time depends on shapes and sizes, not values.
Not timed: the AUC each epoch (sklearn, CPU, the same on both hosts), reading the features, saving the checkpoint.

It imports torch, numpy, pydantic and PyYAML only (``pipelines.train`` keeps pandas out), so it runs on a bare GPU
host. A night trains at most ``train.max_epochs`` epochs (early stopping ends many sooner); ``--epochs`` times
fewer on a slow host, and the table scales the per-epoch median to ``max_epochs``, saying so.

    .venv/bin/python benchmarks/trainer_speed.py --device cpu --epochs 2 --out benchmarks/results/trainer_cpu.json
    python benchmarks/trainer_speed.py --device cuda --out trainer_cuda.json          # on the GPU host
    .venv/bin/python benchmarks/trainer_speed.py --report benchmarks/results/trainer_cpu.json trainer_cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def synthetic(family, cfg, n: int, gen):
    """``n`` windows of the family's input shape (standard normal features) and 0/1 labels at a 10 % rate."""
    import torch

    from factory_core.families import FRAUD_FEATURES, MARKET_FEATURES, spec

    s = spec(family)
    n_feat = len(FRAUD_FEATURES) if s.source == "transactions" else len(MARKET_FEATURES)
    shape = (n, n_feat) if len(s.input_axes) == 2 else (n, cfg.families[family].window, n_feat)
    return torch.randn(shape, generator=gen), (torch.rand(n, generator=gen) < 0.1).float()


def time_family(family, cfg, device_name: str, epochs: int) -> dict:
    import torch

    from pipelines.models import build_model
    from pipelines.train import fit_epoch, predict, seed_everything

    tc = cfg.train
    seed_everything(tc.seed)
    device = torch.device(device_name)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(tc.seed)
    n_train = tc.max_train_samples
    n_val = round(n_train * tc.split[1] / tc.split[0])
    x, y = synthetic(family, cfg, n_train, gen)
    x_val, _ = synthetic(family, cfg, n_val, gen)
    t0 = time.perf_counter()
    model = build_model(family, cfg.families[family], x.shape[-1])
    model.norm.fit(x)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    steps = -(-n_train // tc.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tc.max_epochs * steps)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    sync()
    setup = time.perf_counter() - t0
    per_epoch = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        fit_epoch(family, model, opt, sched, scaler, x, y, tc.batch_size, gen, epoch)
        predict(model, x_val.numpy())
        sync()
        per_epoch.append(time.perf_counter() - t0)
    return {"family": str(family), "n_train": n_train, "n_val": n_val, "input": list(x.shape[1:]),
            "params": sum(p.numel() for p in model.parameters()), "batch_size": tc.batch_size,
            "setup_s": round(setup, 3), "epoch_s": [round(e, 3) for e in per_epoch], "epochs": epochs,
            "max_epochs": tc.max_epochs,
            # the first epoch carries CUDA's and cuDNN's warm-up; the steady epochs are the rest
            "epoch_median_s": round(statistics.median(per_epoch[1:] or per_epoch), 3)}


def host(device_name: str) -> dict:
    import torch

    out = {"device": device_name, "torch": torch.__version__, "python": platform.python_version(),
           "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "load": os.getloadavg()}
    if device_name == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def night_s(f: dict) -> float:
    """The loop at max_epochs: the measured epochs, plus the steady median for those not run."""
    return sum(f["epoch_s"]) + f["epoch_median_s"] * max(0, f["max_epochs"] - f["epochs"]) + f["setup_s"]


def report(runs: list[dict]) -> str:
    cpu = next((r for r in runs if r["host"]["device"] == "cpu"), None)
    lines = ["| family | input | train windows | host | epochs run | first epoch s | steady epoch s | "
             "at max_epochs s | vs CPU |", "|" + "---|" * 9]
    for r in runs:
        h = r["host"]
        name = h.get("gpu") or f"CPU, {h['threads']} threads (load {h['load'][0]:.1f})"
        for f in r["families"]:
            base = next((c for c in cpu["families"] if c["family"] == f["family"]), None) if cpu else None
            speed = f"{night_s(base) / night_s(f):.1f}x" if base and r is not cpu else "1.0x" if base else "—"
            lines.append(f"| {f['family']} | {f['input']} | {f['n_train']} | {name} | {f['epochs']} | "
                         f"{f['epoch_s'][0]:.2f} | {f['epoch_median_s']:.2f} | {night_s(f):.1f} | {speed} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--profile", choices=["smoke", "default"], default="default")
    ap.add_argument("--epochs", type=int, help="epochs to time (default: train.max_epochs)")
    ap.add_argument("--families", nargs="+")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--report", nargs="+", type=Path, help="print the table of saved runs and exit")
    args = ap.parse_args()
    if args.report:
        print(report([json.loads(p.read_text()) for p in args.report]))
        return 0
    from factory_core.config import load_config

    cfg = load_config(None, args.profile)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible")
    fams = [f for f in cfg.families if not args.families or str(f) in args.families]
    run = {"profile": args.profile, "host": host(args.device), "families": []}
    for fam in fams:
        r = time_family(fam, cfg, args.device, args.epochs or cfg.train.max_epochs)
        print(json.dumps(r), flush=True)
        run["families"].append(r)
    run["host"]["load_end"] = os.getloadavg()
    print(report([run]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(run, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Serving throughput and latency with and without micro-batching, and the swap time with and without the canary.

For each family, a smoke-size model is exported and built into a CPU engine by the factory's own builder
(with its canary sample). Then, per concurrency (1, 8, 64 client threads, each sending one request of batch 1
in a closed loop for ``--seconds``): p50/p99 latency per request and requests per second, straight through
``EngineRunner`` and through ``BatchingRunner`` (2 ms window, the profile's opt batch). Both in one run, on
the same host, back to back: compare the ratios, not the absolute numbers.

Swap: under 4 client threads, ``swap()`` to a second version with the canary and without (sha256 and contract
checks only), ``--swaps`` times each, alternating.

    .venv/bin/python benchmarks/serving_batching.py --out benchmarks/results/serving_batching.json

``--gpu-standin`` (a CUDA machine): the same table for a PyTorch stand-in of each family's model captured in a
CUDA graph per batch size. It is a stand-in for a TensorRT engine (TensorRT cannot be installed here), not one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {"market_alert": (40, 16), "price_direction": (64, 16), "fraud_risk": (18,)}


def build_engines(family: str, root: Path, versions: int = 1) -> list[Path]:
    import torch

    from factory_core.config import Family, TargetConfig, load_config
    from pipelines.engines.base import BuildSpec, build_engine, onnx_io
    from pipelines.engines.onnxruntime_builder import OnnxRuntimeBuilder
    from pipelines.export import torch_to_onnx
    from pipelines.models import build_model

    cfg = load_config(profile="smoke", env={})
    fam = Family(family)
    out = []
    for seed in range(1, versions + 1):
        x = np.random.default_rng(seed).normal(size=(64, *SHAPES[family])).astype(np.float32)
        torch.manual_seed(seed)
        model = build_model(fam, cfg.families[fam], x.shape[-1]).eval()
        onnx_path = torch_to_onnx(model, fam, x, root / f"{family}{seed}" / "model.onnx", 18)
        inputs, outputs, profile = onnx_io(onnx_path, fam, cfg.families[fam])
        spec = BuildSpec(family=family, version=f"20261201.{seed:08x}", precision="fp32",
                         target=TargetConfig(name="cpu"), onnx=onnx_path, calibration_sha256=None, profile=profile,
                         options={"graph_optimization_level": "extended", "intra_op_threads": 1,
                                  "build_timeout_s": 300})
        dest = root / f"{family}{seed}" / "engine"
        build_engine(OnnxRuntimeBuilder(), spec, dest, inputs, outputs, {"hostname": "bench"}, sample=x[:8])
        out.append(dest)
    return out


def _standin_model(torch, family: str):
    """Each family's architecture at smoke size (hidden 32), written out so the GPU machine needs only torch."""
    nn = torch.nn
    f = SHAPES[family][-1]
    if family == "market_alert":
        class Gru(nn.Module):
            def __init__(self):
                super().__init__()
                self.gru, self.head = nn.GRU(f, 32, batch_first=True), nn.Linear(32, 1)

            def forward(self, x):
                return torch.sigmoid(self.head(self.gru(x)[0][:, -1]))
        return Gru()
    if family == "price_direction":
        class ConvTransformer(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv1d(f, 32, 3, padding=1)
                self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 1)
                self.head = nn.Linear(32, 2)

            def forward(self, x):
                h = self.conv(x.transpose(1, 2)).transpose(1, 2)
                return torch.softmax(self.head(self.enc(h).mean(1)), -1)
        return ConvTransformer()
    return nn.Sequential(nn.Linear(f, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid())


class CudaGraphStandIn:
    """A family's PyTorch model on CUDA, one CUDA graph captured per batch size 1..max_batch: a stand-in for a
    TensorRT engine's serving path (static buffers, graph replay), not a TensorRT engine."""

    def __init__(self, family: str, max_batch: int = 64, opt_batch: int = 32):
        import torch

        self.torch = torch
        self.model = _standin_model(torch, family).eval().cuda()
        self.manifest = type("M", (), {"inputs": [type("T", (), {"profile": {
            "min": [1, *SHAPES[family]], "opt": [opt_batch, *SHAPES[family]], "max": [max_batch, *SHAPES[family]]}})]})
        self.stream = torch.cuda.Stream()
        self.graphs = {}
        self.lock = threading.Lock()
        with torch.no_grad():
            for b in range(1, max_batch + 1):
                static_in = torch.zeros((b, *SHAPES[family]), device="cuda")
                with torch.cuda.stream(self.stream):
                    for _ in range(3):
                        self.model(static_in)
                self.stream.synchronize()
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, stream=self.stream):
                    static_out = self.model(static_in)
                host_in = torch.zeros((b, *SHAPES[family]), pin_memory=True)
                host_out = torch.zeros(static_out.shape, pin_memory=True)
                self.graphs[b] = (g, host_in, static_in, static_out, host_out)

    def predict(self, x: np.ndarray) -> np.ndarray:
        with self.lock:  # one stream, one set of static buffers per batch size
            g, host_in, dev_in, dev_out, host_out = self.graphs[len(x)]
            host_in.numpy()[...] = x
            with self.torch.cuda.stream(self.stream):
                dev_in.copy_(host_in, non_blocking=True)
                g.replay()
                host_out.copy_(dev_out, non_blocking=True)
            self.stream.synchronize()
            return host_out.numpy().copy()


def gpu_standin_table(seconds: float) -> list[dict]:
    return batching_table({f: CudaGraphStandIn(f) for f in SHAPES}, seconds, "[cuda-graph stand-in] ")


def closed_loop(predict, x: np.ndarray, clients: int, seconds: float) -> dict:
    lat: list[list[float]] = [[] for _ in range(clients)]
    stop = threading.Event()

    def client(i: int) -> None:
        mine = lat[i]
        while not stop.is_set():
            t0 = time.perf_counter()
            predict(x)
            mine.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    all_ = np.concatenate([np.asarray(v) for v in lat]) * 1e3
    return {"requests": int(len(all_)), "rps": round(len(all_) / wall, 1),
            "p50_ms": round(float(np.percentile(all_, 50)), 3), "p99_ms": round(float(np.percentile(all_, 99)), 3)}


def batching_table(runners: dict, seconds: float, tag: str = "") -> list[dict]:
    """Per family and concurrency: each runner straight, then behind a BatchingRunner (2 ms window)."""
    from model_registry.batching import BatchingRunner

    rows = []
    for family, runner in runners.items():
        x = np.random.default_rng(0).normal(size=(1, *SHAPES[family])).astype(np.float32)
        for clients in (1, 8, 64):
            plain = closed_loop(runner.predict, x, clients, seconds)
            br = BatchingRunner(runner, window_ms=2.0)
            batched = closed_loop(br.predict, x, clients, seconds)
            mean_batch = float(np.mean(br.batches)) if br.batches else 0.0
            br.close()
            rows.append({"family": family, "clients": clients, "plain": plain, "batched": batched,
                         "mean_batch": round(mean_batch, 1), "max_batch": br.max_batch})
            print(f"{tag}{family} c={clients}: plain {plain} | batched {batched} (mean batch {mean_batch:.1f})",
                  flush=True)
    return rows


def swap_times(v1: Path, v2: Path, swaps: int) -> dict:
    from model_registry.runtime import EngineRunner

    x = np.random.default_rng(0).normal(size=(4, *SHAPES["fraud_risk"])).astype(np.float32)
    out = {"canary": [], "no_canary": []}
    failed = [0]
    for canary in [True, False] * swaps:
        runner = EngineRunner(v1, canary=canary)
        stop = threading.Event()

        def client():
            while not stop.is_set():
                try:
                    runner.predict(x)
                except Exception:  # noqa: BLE001
                    failed[0] += 1

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        seconds = runner.swap(v2)
        stop.set()
        for t in threads:
            t.join()
        out["canary" if canary else "no_canary"].append(round(seconds * 1e3, 1))
    return {k: {"median_ms": float(np.median(v)), "max_ms": float(np.max(v)), "n": len(v)} for k, v in out.items()} | {
        "failed_requests": failed[0]}


def report(res: dict) -> str:
    lines = ["| family | clients | p50 ms | p99 ms | req/s | p50 ms batched | p99 ms batched | req/s batched | "
             "mean batch | throughput ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["batching"]:
        p, b = r["plain"], r["batched"]
        lines.append(f"| {r['family']} | {r['clients']} | {p['p50_ms']} | {p['p99_ms']} | {p['rps']} | {b['p50_ms']} | "
                     f"{b['p99_ms']} | {b['rps']} | {r['mean_batch']} | {b['rps'] / p['rps']:.2f} |")
    s = res["swap"]
    lines.append(f"\nswap under 4 clients: with canary median {s['canary']['median_ms']} ms (max "
                 f"{s['canary']['max_ms']}), without {s['no_canary']['median_ms']} ms (max {s['no_canary']['max_ms']}), "
                 f"n={s['canary']['n']} each; failed requests {s['failed_requests']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--swaps", type=int, default=5)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--report", type=Path)
    ap.add_argument("--gpu-standin", action="store_true", help="only the CUDA-graph PyTorch stand-in table")
    args = ap.parse_args()
    if args.gpu_standin:
        res = {"gpu_standin": gpu_standin_table(args.seconds)}
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=1))
        return 0
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return 0
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as d:
        engines = {f: build_engines(f, Path(d))[0] for f in SHAPES}
        v1, v2 = build_engines("fraud_risk", Path(d) / "swap", versions=2)
        from model_registry.runtime import EngineRunner

        runners = {f: EngineRunner(folder) for f, folder in engines.items()}
        res = {"batching": batching_table(runners, args.seconds), "swap": swap_times(v1, v2, args.swaps)}
    print(report(res))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

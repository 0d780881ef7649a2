"""Serving throughput and latency with and without dynamic batching, and the swap time with and without the canary.

For each family, a smoke-size model is exported and built into a CPU engine by the factory's own builder
(with its canary sample). Then, per concurrency (1, 8, 64 client threads, each sending one request of batch 1
in a closed loop): p50/p99 latency per request and requests per second, straight through ``EngineRunner``
("plain") and through ``BatchingRunner`` (its defaults: 2 ms window for a nearly full batch, the profile's opt
batch), for ``--seconds`` each. Both in the same process, interleaved so that drift of a shared host hits both
alike: at 1 client the one client thread alternates plain and batched requests (ABBA), and req/s is 1 / mean
latency; at 8 and 64 clients they alternate in ``--rounds`` rounds (ABBA) of ``--seconds / --rounds`` each, and
req/s is requests / wall time. Latencies of all rounds are pooled. Compare the ratios, not the absolute numbers.
The table ends with the issue's targets checked against the measured ratios.

Swap times (warm, cold and no canary): ``benchmarks/serving_swap.py``; a thousand swaps: ``serving_soak.py``.

    .venv/bin/python benchmarks/serving_batching.py --out benchmarks/results/serving_batching.json

``--gpu-standin`` (a CUDA machine; needs only numpy and torch): the same table for a PyTorch stand-in of each
family's model captured in a CUDA graph per batch size. It is a stand-in for a TensorRT engine (TensorRT cannot be
installed here), not one.
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

    checks_requests = True  # predict checks each request, as EngineRunner.predict does: plain pays it as batched

    def check_request(self, x: np.ndarray) -> np.ndarray:
        """The stand-in's contract (what ``EngineRunner.check_request`` does for an engine): float32, the family's
        trailing shape, 1..max rows, finite."""
        prof = self.manifest.inputs[0].profile
        if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape[1:] == tuple(prof["max"][1:])
                and 1 <= len(x) <= prof["max"][0] and np.isfinite(x).all()):
            raise ValueError(f"request outside the stand-in's contract: {getattr(x, 'shape', type(x))}")
        return np.ascontiguousarray(x)

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = self.check_request(x)
        with self.lock:  # one stream, one set of static buffers per batch size
            g, host_in, dev_in, dev_out, host_out = self.graphs[len(x)]
            host_in.numpy()[...] = x
            with self.torch.cuda.stream(self.stream):
                dev_in.copy_(host_in, non_blocking=True)
                g.replay()
                host_out.copy_(dev_out, non_blocking=True)
            self.stream.synchronize()
            return host_out.numpy().copy()


def closed_loop(predict, x: np.ndarray, clients: int, seconds: float) -> tuple[np.ndarray, float]:
    """``clients`` threads, each calling ``predict(x)`` back to back for ``seconds``: (latencies in ms, wall s)."""
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
    return np.concatenate([np.asarray(v) for v in lat]) * 1e3, time.perf_counter() - t0


def alternating(predicts: tuple, x: np.ndarray, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """One client thread calling ``predicts[0]`` and ``predicts[1]`` in turn (ABBA) for ``2 * seconds``: the
    latencies in ms of each."""
    lat: tuple[list[float], list[float]] = ([], [])
    end = time.perf_counter() + 2 * seconds
    while time.perf_counter() < end:
        for k in (0, 1, 1, 0):
            t0 = time.perf_counter()
            predicts[k](x)
            lat[k].append(time.perf_counter() - t0)
    return np.asarray(lat[0]) * 1e3, np.asarray(lat[1]) * 1e3


def summary(lat_ms: list[np.ndarray], wall: float | None) -> dict:
    """p50/p99 in ms and req/s (requests / ``wall``; ``wall`` None: 1 / mean latency, one client)."""
    all_ = np.concatenate(lat_ms)
    p50, p99 = float(np.percentile(all_, 50)), float(np.percentile(all_, 99))
    rps = len(all_) / wall if wall else 1e3 / float(np.mean(all_))
    return {"requests": int(len(all_)), "rps": round(rps, 1), "p50_ms": round(p50, 4),
            "p99_ms": round(p99, 4), "p99_over_p50": round(p99 / p50, 2)}


def batching_table(runners: dict, seconds: float, rounds: int = 8, tag: str = "") -> list[dict]:
    """Per family and concurrency: each runner straight and behind a BatchingRunner, interleaved in rounds."""
    from model_registry.batching import BatchingRunner

    rows = []
    for family, runner in runners.items():
        x = np.random.default_rng(0).normal(size=(1, *SHAPES[family])).astype(np.float32)
        for clients in (1, 8, 64):
            br = BatchingRunner(runner)
            for _ in range(200):  # warm both paths (allocator, branch caches) before anything is timed
                runner.predict(x)
                br.predict(x)
            lat = {"plain": [], "batched": []}
            wall = {"plain": 0.0, "batched": 0.0}
            if clients == 1:
                plain_ms, batched_ms = alternating((runner.predict, br.predict), x, seconds)
                lat, wall = {"plain": [plain_ms], "batched": [batched_ms]}, {"plain": None, "batched": None}
            for r in range(rounds if clients > 1 else 0):
                order = ("plain", "batched") if r % 2 == 0 else ("batched", "plain")
                for which in order:
                    ms, w = closed_loop(runner.predict if which == "plain" else br.predict, x, clients,
                                        seconds / rounds)
                    lat[which].append(ms)
                    wall[which] += w
            br.close()
            rows.append(_row(family, clients, lat, wall, br, tag + "[threads] "))
    return rows


def async_batching_table(runners: dict, seconds: float, rounds: int = 8, tag: str = "",
                         instances: int = 1) -> list[dict]:
    """The same table for an asyncio server: client coroutines on one event loop. "plain" awaits each request on
    the loop's default thread pool (``run_in_executor(None, runner.predict, x)``, what an asyncio server does with
    a blocking engine); "batched" awaits ``AsyncBatchingRunner.predict``. Interleaved as in :func:`batching_table`."""
    import asyncio

    from model_registry.batching import AsyncBatchingRunner

    async def closed(predict, x, clients: int, secs: float) -> tuple[np.ndarray, float]:
        lat: list[float] = []
        stop = False

        async def client() -> None:
            while not stop:
                t0 = time.perf_counter()
                await predict(x)
                lat.append(time.perf_counter() - t0)

        tasks = [asyncio.create_task(client()) for _ in range(clients)]
        t0 = time.perf_counter()
        await asyncio.sleep(secs)
        stop = True
        await asyncio.gather(*tasks)
        return np.asarray(lat) * 1e3, time.perf_counter() - t0

    async def family_rows(family: str, runner) -> list[dict]:
        loop = asyncio.get_running_loop()
        x = np.random.default_rng(0).normal(size=(1, *SHAPES[family])).astype(np.float32)

        def plain(v):
            return loop.run_in_executor(None, runner.predict, v)

        out = []
        for clients in (1, 8, 64):
            br = AsyncBatchingRunner(runner, instances=instances)
            for _ in range(200):
                await plain(x)
                await br.predict(x)
            lat = {"plain": [], "batched": []}
            wall = {"plain": 0.0, "batched": 0.0}
            if clients == 1:
                got: tuple[list[float], list[float]] = ([], [])
                end = time.perf_counter() + 2 * seconds
                while time.perf_counter() < end:
                    for k in (0, 1, 1, 0):
                        t0 = time.perf_counter()
                        await (plain if k == 0 else br.predict)(x)
                        got[k].append(time.perf_counter() - t0)
                lat = {"plain": [np.asarray(got[0]) * 1e3], "batched": [np.asarray(got[1]) * 1e3]}
                wall = {"plain": None, "batched": None}
            for r in range(rounds if clients > 1 else 0):
                for which in (("plain", "batched") if r % 2 == 0 else ("batched", "plain")):
                    ms, w = await closed(plain if which == "plain" else br.predict, x, clients, seconds / rounds)
                    lat[which].append(ms)
                    wall[which] += w
            br.close()
            out.append(_row(family, clients, lat, wall, br, tag + "[asyncio] "))
        return out

    rows = []
    for family, runner in runners.items():
        rows += asyncio.run(family_rows(family, runner))
    return rows


def _row(family: str, clients: int, lat: dict, wall: dict, br, tag: str) -> dict:
    plain, batched = summary(lat["plain"], wall["plain"]), summary(lat["batched"], wall["batched"])
    counts = br.counters()
    row = {"family": family, "clients": clients, "plain": plain, "batched": batched,
           "mean_batch": round(counts["rows"] / max(counts["batches"], 1), 2), "max_batch": br.max_batch,
           "ran_at_once_share": round(counts["ran_at_once"] / max(counts["requests"], 1), 3),
           "throughput_ratio": round(batched["rps"] / plain["rps"], 3),
           "p50_ratio": round(batched["p50_ms"] / plain["p50_ms"], 3)}
    print(f"{tag}{family} c={clients}: plain {plain} | batched {batched} | mean batch {row['mean_batch']} "
          f"| throughput x{row['throughput_ratio']} p50 x{row['p50_ratio']}", flush=True)
    return row


def table(rows: list[dict], gpu: bool = False) -> str:
    """The markdown table, then the issue's targets (64 clients: >= 1.5x plain throughput on CPU, 3x on GPU)."""
    lines = ["| family | clients | req/s plain | req/s batched | throughput ratio | p50 ms plain | p50 ms batched | "
             "p50 ratio | p99 ms plain | p99 ms batched | p99/p50 plain | p99/p50 batched | mean batch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    misses = []
    for r in rows:
        p, b = r["plain"], r["batched"]
        lines.append(f"| {r['family']} | {r['clients']} | {p['rps']:.0f} | {b['rps']:.0f} | "
                     f"{r['throughput_ratio']:.2f} | {p['p50_ms']:.3f} | {b['p50_ms']:.3f} | {r['p50_ratio']:.2f} | "
                     f"{p['p99_ms']:.3f} | {b['p99_ms']:.3f} | {p['p99_over_p50']:.2f} | {b['p99_over_p50']:.2f} | "
                     f"{r['mean_batch']:.1f} |")
        where = f"{r['family']} c={r['clients']}"
        if r["clients"] == 1 and r["p50_ratio"] > 1.05:
            misses.append(f"{where}: p50 x{r['p50_ratio']:.2f} (target <= 1.05)")
        if r["clients"] == 1 and r["throughput_ratio"] < 0.95:
            misses.append(f"{where}: throughput x{r['throughput_ratio']:.2f} (target >= 0.95)")
        if r["clients"] in (1, 8) and b["p99_over_p50"] > 2:
            misses.append(f"{where}: batched p99/p50 {b['p99_over_p50']:.2f} (target <= 2)")
        if r["clients"] == 64 and r["throughput_ratio"] < (3.0 if gpu else 1.5):
            misses.append(f"{where}: throughput x{r['throughput_ratio']:.2f} (target >= {3.0 if gpu else 1.5})")
    lines.append("\ntargets: " + ("all met" if not misses else "missed: " + "; ".join(misses)))
    return "\n".join(lines)


TABLES = {"batching": ("CPU engines, client threads", False), "batching_asyncio": ("CPU engines, asyncio", False),
          "gpu_standin": ("CUDA-graph stand-in, client threads", True),
          "gpu_standin_asyncio": ("CUDA-graph stand-in, asyncio", True)}


def report(res: dict) -> str:
    return "\n\n".join(f"{title}:\n\n{table(res[key], gpu=gpu)}" for key, (title, gpu) in TABLES.items()
                       if res.get(key))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="per family, concurrency and path")
    ap.add_argument("--rounds", type=int, default=8,
                    help="8 and 64 clients: interleaved plain/batched rounds the seconds split into")
    ap.add_argument("--families", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--front", choices=("threads", "asyncio", "both"), default="both",
                    help="client threads calling BatchingRunner, coroutines awaiting AsyncBatchingRunner, or both")
    ap.add_argument("--engines", type=Path,
                    help="CPU engines built earlier with --build-only (a machine without torch's ONNX export)")
    ap.add_argument("--build-only", type=Path, metavar="DIR", help="build the CPU engines into DIR and stop")
    ap.add_argument("--instances", type=int, default=1,
                    help="asyncio front: engine threads (batches at once); the thread front runs one at a time")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--report", type=Path)
    ap.add_argument("--gpu-standin", action="store_true", help="only the CUDA-graph PyTorch stand-in tables")
    args = ap.parse_args()
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return 0
    if args.build_only:
        for f in args.families:
            print(build_engines(f, args.build_only)[0])
        return 0
    fronts = ("threads", "asyncio") if args.front == "both" else (args.front,)
    res = {}
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as d:
        if args.gpu_standin:
            runners, key, tag = {f: CudaGraphStandIn(f) for f in args.families}, "gpu_standin", "[cuda-graph stand-in] "
        else:
            from model_registry.runtime import EngineRunner

            runners = {f: EngineRunner(args.engines / f"{f}1" / "engine" if args.engines else
                                       build_engines(f, Path(d))[0]) for f in args.families}
            key, tag = "batching", ""
        if "threads" in fronts:
            res[key] = batching_table(runners, args.seconds, args.rounds, tag)
        if "asyncio" in fronts:
            res[key + "_asyncio"] = async_batching_table(runners, args.seconds, args.rounds, tag, args.instances)
            res["instances"] = args.instances
    print(report(res))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

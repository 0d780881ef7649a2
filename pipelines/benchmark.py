"""The latency harness: warm-up, then timed iterations on the target's own hardware.

Reports p50/p90/p99/max at batch 1 and at the profile's opt batch, and throughput.
CPU runners fix and record their thread count. GPU runners time with CUDA events on
their own stream, stage inputs in pinned host memory, and can replay a CUDA graph;
NVML telemetry is sampled during GPU runs. Timing is a runner method, so a test can
drive the statistics with a synthetic clock.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from factory_core.contracts import Latency
from model_registry.runners import infer_batched, time_calls  # noqa: F401 - the engine runners' own helpers
from model_registry.trt import cuda_latencies

from .evidence import round_stats


def latency_stats(batch: int, samples_ns: list[int] | np.ndarray, rounds: list[np.ndarray] | None = None) -> Latency:
    """p50/p90/p99/max/mean and throughput of timed calls at one batch size (with each round's p50/p99)."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if ms.size == 0:
        raise ValueError("no timed iterations")
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    rs = round_stats(rounds) if rounds else None
    return Latency(batch=batch, iters=int(ms.size), p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99),
                   max_ms=float(ms.max()), mean_ms=mean, throughput=batch / (mean / 1e3) if mean > 0 else float("inf"),
                   rounds_p50_ms=rs.p50.tolist() if rs else [], rounds_p99_ms=rs.p99.tolist() if rs else [])


class Runner(Protocol):
    """What the harness times: the engine runners of :mod:`model_registry.runners` and :class:`TorchRunner`."""

    name: str
    info: dict[str, Any]
    """What the numbers depend on: threads, provider, device, CUDA graphs…"""

    def infer(self, x: np.ndarray) -> np.ndarray: ...

    def latencies(self, x: np.ndarray, warmup: int, iters: int, max_seconds: float) -> list[int]: ...


class TorchRunner:
    """PyTorch eager (the baseline), on CPU or CUDA; on CUDA optionally replaying a captured CUDA graph."""

    def __init__(self, model: Any, device: str = "cpu", threads: int = 1, cuda_graph: bool = False):
        import torch

        self.torch, self.device = torch, torch.device(device)
        self.model = model.to(self.device).eval()
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.name = f"torch-{'cudagraph' if self.cuda_graph else 'eager'}:{self.device.type}"
        self.info = {"backend": "torch", "device": str(self.device), "threads": threads if self.device.type == "cpu"
                     else None, "cuda_graph": self.cuda_graph, "torch": torch.__version__}

    def infer(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(x).to(self.device)).float().cpu().numpy()

    def latencies(self, x: np.ndarray, warmup: int, iters: int, max_seconds: float) -> list[int]:
        if self.device.type == "cpu":
            with self.torch.inference_mode():
                xt = self.torch.from_numpy(x)
                return time_calls(lambda: self.model(xt), warmup, iters, max_seconds)
        return cuda_latencies(self.torch, self._cuda_step(x), warmup, iters, max_seconds)

    def _cuda_step(self, x: np.ndarray) -> Callable[[Any], None]:
        """One request on ``stream``: pinned host → device, forward (or graph replay), device → pinned host."""
        torch = self.torch
        host_in = torch.from_numpy(x).pin_memory()
        dev_in = torch.empty_like(host_in, device=self.device)
        with torch.inference_mode():
            dev_in.copy_(host_in)
            out = self.model(dev_in)
            host_out = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            graph = None
            if self.cuda_graph:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):
                        self.model(dev_in)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = self.model(dev_in)

        def step(stream: Any) -> None:
            with torch.inference_mode(), torch.cuda.stream(stream):
                dev_in.copy_(host_in, non_blocking=True)
                if graph is not None:
                    graph.replay()
                    res = out
                else:
                    res = self.model(dev_in)
                host_out.copy_(res, non_blocking=True)

        return step


def host_load() -> dict[str, float]:
    """What else the host was doing: 1-minute load average and CPU count."""
    import os

    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"loadavg_1m": load1, "cpus": float(os.cpu_count() or 0)}


VISIT_WARMUP = 3
"""Untimed calls at each visit of a runner in a round."""


def benchmark_interleaved(runners: dict[str, Runner], x_pool: np.ndarray, opt_batch: int, warmup: int, iters: int,
                          max_seconds: float, rounds: int, gpu: bool = False, seed: int = 0) -> dict[str, Any]:
    """Time several runners (the champion and the candidates) interleaved, in ``rounds`` rounds on this host.

    Each round visits the runners in a fresh random order and times ``iters / rounds`` calls of each at
    batch 1 and at ``opt_batch``, after :data:`VISIT_WARMUP` untimed calls (the first call after another
    runner finds cold caches, and would otherwise be the p99 of whoever follows a slow runner); host noise (another process, a frequency change) lands on every runner
    of the round alike instead of on whichever ran when it happened. Returns, per runner, the pooled
    statistics plus per-round p50/p99 (``rounds_p50_ms``, ``rounds_p99_ms``) for the gates' intervals,
    and ``host``: the load average before and after, and the share of a CPU this process used.
    """
    from monitoring.nvml import TelemetrySampler

    reps = -(-opt_batch // len(x_pool))
    shapes = {"batch1": np.ascontiguousarray(x_pool[:1]),
              "opt": np.ascontiguousarray(np.concatenate([x_pool] * reps)[:opt_batch])}
    per_round = max(10, -(-iters // rounds))
    seconds = max_seconds / rounds
    samples: dict[str, dict[str, list[np.ndarray]]] = {n: {k: [] for k in shapes} for n in runners}
    rng = np.random.default_rng(seed)
    before, cpu0, wall0 = host_load(), time.process_time(), time.perf_counter()
    with TelemetrySampler() if gpu else contextlib.nullcontext() as sampler:
        for name, r in runners.items():
            for x in shapes.values():
                r.latencies(x, warmup, 1, seconds)
        for _ in range(rounds):
            for name in rng.permutation(list(runners)):
                for key, x in shapes.items():
                    samples[name][key].append(
                        np.asarray(runners[name].latencies(x, VISIT_WARMUP, per_round, seconds)))
    wall = time.perf_counter() - wall0
    host = {"loadavg_1m_before": before["loadavg_1m"], "loadavg_1m_after": host_load()["loadavg_1m"],
            "cpus": before["cpus"], "process_cpu_share": (time.process_time() - cpu0) / wall if wall else 0.0,
            "rounds": rounds, "calls_per_round": per_round}
    out: dict[str, Any] = {}
    for name, r in runners.items():
        res: dict[str, Any] = {"runner": r.name, "info": r.info, "host": host}
        for key, x in shapes.items():
            res[key] = latency_stats(len(x), np.concatenate(samples[name][key]), samples[name][key]).model_dump()
        if gpu:
            res["telemetry"] = sampler.summary()
        out[name] = res
    return out


def benchmark_runner(runner: Runner, x_pool: np.ndarray, opt_batch: int, warmup: int, iters: int,
                     max_seconds: float, gpu: bool = False, rounds: int = 1) -> dict[str, Any]:
    """One runner alone: p50/p90/p99/max at batch 1 and at ``opt_batch`` (+ NVML telemetry on GPU)."""
    return benchmark_interleaved({"runner": runner}, x_pool, opt_batch, warmup, iters, max_seconds, rounds,
                                 gpu)["runner"]

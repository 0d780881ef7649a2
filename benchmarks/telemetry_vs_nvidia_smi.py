"""Cross-check the NVML exporter against ``nvidia-smi`` at the same moment, under load, on a real GPU.

    python benchmarks/telemetry_vs_nvidia_smi.py [--seconds 20]

Puts the GPU under a matmul load (torch, CUDA), then takes one exporter scrape and one
``nvidia-smi --query-gpu`` reading back to back, and prints them side by side. Also shows
whether the XID listener could register for events, and a TelemetrySampler summary over
the load (what training and benchmarks attach to their MLflow runs).
"""

from __future__ import annotations

import argparse
import subprocess
import threading
import time

QUERY = {  # nvidia-smi field -> (exporter series, scale to the exporter's unit)
    "utilization.gpu": ("DCGM_FI_DEV_GPU_UTIL", 1),
    "utilization.memory": ("DCGM_FI_DEV_MEM_COPY_UTIL", 1),
    "memory.used": ("DCGM_FI_DEV_FB_USED", 1),
    "memory.free": ("DCGM_FI_DEV_FB_FREE", 1),
    "temperature.gpu": ("DCGM_FI_DEV_GPU_TEMP", 1),
    "temperature.memory": ("DCGM_FI_DEV_MEMORY_TEMP", 1),
    "power.draw": ("DCGM_FI_DEV_POWER_USAGE", 1),
    "clocks.sm": ("DCGM_FI_DEV_SM_CLOCK", 1),
    "clocks.mem": ("DCGM_FI_DEV_MEM_CLOCK", 1),
}


def main() -> None:
    import torch
    from prometheus_client.parser import text_string_to_metric_families

    from monitoring.exporter import NvmlCollector, exposition
    from monitoring.nvml import TelemetrySampler

    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    stop = threading.Event()

    def load() -> None:
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
        while not stop.is_set():
            for _ in range(20):
                a = (a @ a).clamp_(-1, 1)
            torch.cuda.synchronize()

    collector = NvmlCollector(listen_xid=True)
    with TelemetrySampler(interval_s=0.2) as sampler:
        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        time.sleep(args.seconds)
        text = exposition(collector)
        smi = subprocess.run(["nvidia-smi", "--id=0", f"--query-gpu={','.join(QUERY)}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True).stdout.strip().split(", ")
        stop.set()
        worker.join()
    ours = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.labels.get("gpu", "0") == "0"}
    print(f"{'nvidia-smi field':22} {'nvidia-smi':>12} {'exporter series':34} {'exporter':>12}")
    for (field, (series, scale)), value in zip(QUERY.items(), smi):
        print(f"{field:22} {value:>12} {series:34} {ours.get(series, float('nan')) * scale:>12.1f}")
    print(f"XID listener: {'active' if collector.xid and collector.xid.active else collector.xid.reason if collector.xid else 'off'}"
          f"; DCGM_FI_DEV_XID_ERRORS = {ours.get('DCGM_FI_DEV_XID_ERRORS')}")
    summary = sampler.summary()
    print("TelemetrySampler over the load:", {k: (round(v["mean"], 1), round(v["max"], 1)) if isinstance(v, dict) else v
                                              for k, v in summary.items()})
    print("\n".join(line for line in text.splitlines() if line.startswith(("factory_", "DCGM_FI_DEV_XID"))))
    if collector.xid:
        collector.xid.close()


if __name__ == "__main__":
    main()

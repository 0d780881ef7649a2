"""NVML readings under dcgm-exporter's metric names, and a background sampler for benchmarks and training.

Field names follow dcgm-exporter (``DCGM_FI_DEV_GPU_UTIL`` …) so the same words mean
the same thing in a benchmark report, an MLflow run and a Grafana panel.
"""

from __future__ import annotations

import threading
import time
from typing import Any

# dcgm-exporter name → (unit, how to read it from a pynvml handle)
FIELDS: dict[str, str] = {
    "DCGM_FI_DEV_GPU_UTIL": "%",
    "DCGM_FI_DEV_MEM_COPY_UTIL": "%",
    "DCGM_FI_DEV_FB_USED": "MiB",
    "DCGM_FI_DEV_FB_FREE": "MiB",
    "DCGM_FI_DEV_GPU_TEMP": "C",
    "DCGM_FI_DEV_POWER_USAGE": "W",
    "DCGM_FI_DEV_SM_CLOCK": "MHz",
    "DCGM_FI_DEV_MEM_CLOCK": "MHz",
}


def read_device(pynvml: Any, handle: Any) -> dict[str, float]:
    """One reading of :data:`FIELDS` from an NVML device handle."""
    util = pynvml.nvmlDeviceGetUtilizationRates(handle)
    try:  # v2 excludes driver-reserved memory from "used", as nvidia-smi and dcgm-exporter report it
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
    except (AttributeError, TypeError, pynvml.NVMLError):
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
    return {
        "DCGM_FI_DEV_GPU_UTIL": float(util.gpu),
        "DCGM_FI_DEV_MEM_COPY_UTIL": float(util.memory),
        "DCGM_FI_DEV_FB_USED": mem.used / (1 << 20),
        "DCGM_FI_DEV_FB_FREE": mem.free / (1 << 20),
        "DCGM_FI_DEV_GPU_TEMP": float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
        "DCGM_FI_DEV_POWER_USAGE": pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
        "DCGM_FI_DEV_SM_CLOCK": float(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
        "DCGM_FI_DEV_MEM_CLOCK": float(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM)),
    }


class TelemetrySampler:
    """Samples GPU ``index`` every ``interval_s`` on a thread while the ``with`` block runs.

    Without NVML or a GPU it samples nothing and :meth:`summary` says why; it never
    makes the measured work fail.
    """

    def __init__(self, index: int = 0, interval_s: float = 0.05):
        self.index, self.interval_s = index, interval_s
        self.samples: list[dict[str, float]] = []
        self.reason = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "TelemetrySampler":
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
        except Exception as exc:  # ImportError, NVMLError: no driver, no GPU
            self.reason = f"no NVML telemetry: {exc}"
            return self

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.samples.append({"t": time.time(), **read_device(pynvml, handle)})
                except Exception as exc:
                    self.reason = f"NVML read failed: {exc}"
                    return
                self._stop.wait(self.interval_s)

        self._pynvml = pynvml
        self._thread = threading.Thread(target=loop, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._pynvml.nvmlShutdown()

    def summary(self) -> dict[str, Any]:
        """Mean and max of each field over the run (``available: False`` with the reason when none)."""
        if not self.samples:
            return {"available": False, "reason": self.reason or "no samples"}
        out: dict[str, Any] = {"available": True, "samples": len(self.samples)}
        for name, unit in FIELDS.items():
            values = [s[name] for s in self.samples]
            out[name] = {"mean": sum(values) / len(values), "max": max(values), "unit": unit}
        return out


def summary_metrics(summary: dict[str, Any], prefix: str) -> dict[str, float]:
    """MLflow metrics from :meth:`TelemetrySampler.summary`: ``<prefix>.<series>_mean`` and ``_max``."""
    return {f"{prefix}.{name}_{stat}": float(v[stat]) for name, v in summary.items() if isinstance(v, dict)
            for stat in ("mean", "max")}

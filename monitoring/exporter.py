"""Prometheus exporter of NVML telemetry under dcgm-exporter's metric names and labels.

Dashboards built for dcgm-exporter (e.g. Grafana 12239) work unchanged: the same
``DCGM_FI_*`` names, units and labels (``gpu``, ``UUID``, ``pci_bus_id``, ``device``,
``modelName``, ``Hostname``). Fields a GPU does not support are left out rather than
reported as 0. Without NVML or a GPU the exporter still serves its own health metrics
(``factory_exporter_nvml_up 0`` with the reason) so an alert can tell "no GPU" from
"exporter down".

XID errors arrive as NVML events, not as a value to read: :class:`XidListener` waits on an
NVML event set in a background thread, and ``DCGM_FI_DEV_XID_ERRORS`` reports the last
XID seen per GPU (0 before any), as dcgm-exporter does. ``factory telemetry serve`` runs
the listener; a one-off scrape (``once``) cannot have seen events, so it leaves the series out.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any, Iterator

from .nvml import read_device

# Every series is exposed as a gauge: prometheus_client appends ``_total`` to counters, and the
# exact dcgm-exporter names matter more to existing dashboards and rules than the type.
HELP = {
    "DCGM_FI_DEV_MEMORY_TEMP": "Memory temperature (in C).",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": "Total energy consumption since boot (in mJ).",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": "Total number of PCIe retries.",
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": "Total number of single-bit volatile ECC errors.",
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": "Total number of double-bit volatile ECC errors.",
    "DCGM_FI_DEV_GPU_UTIL": "GPU utilization (in %).",
    "DCGM_FI_DEV_MEM_COPY_UTIL": "Memory utilization (in %).",
    "DCGM_FI_DEV_FB_USED": "Framebuffer memory used (in MiB).",
    "DCGM_FI_DEV_FB_FREE": "Framebuffer memory free (in MiB).",
    "DCGM_FI_DEV_GPU_TEMP": "GPU temperature (in C).",
    "DCGM_FI_DEV_POWER_USAGE": "Power draw (in W).",
    "DCGM_FI_DEV_SM_CLOCK": "SM clock frequency (in MHz).",
    "DCGM_FI_DEV_MEM_CLOCK": "Memory clock frequency (in MHz).",
    "DCGM_FI_DEV_XID_ERRORS": "Value of the last XID error encountered.",
}
log = logging.getLogger(__name__)
LABELS = ["gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname"]


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _optional(pynvml: Any, handle: Any) -> dict[str, float]:
    """Fields that not every GPU or driver supports; absent ones are skipped."""
    out: dict[str, float] = {}
    probes = {
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle),
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": lambda: pynvml.nvmlDeviceGetPcieReplayCounter(handle),
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": lambda: pynvml.nvmlDeviceGetTotalEccErrors(
            handle, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC),
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": lambda: pynvml.nvmlDeviceGetTotalEccErrors(
            handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC),
        "DCGM_FI_DEV_MEMORY_TEMP": lambda: pynvml.nvmlDeviceGetFieldValues(
            handle, [pynvml.NVML_FI_DEV_MEMORY_TEMP])[0].value.uiVal,
    }
    for name, probe in probes.items():
        try:
            value = probe()
        except Exception:  # NVMLError_NotSupported and friends: leave the series out
            continue
        if value is not None:
            out[name] = float(value)
    return out


class XidListener:
    """Waits on an NVML event set for XID critical errors; ``last[i]`` is GPU ``i``'s last XID (0: none yet)."""

    def __init__(self, pynvml: Any, count: int, wait_ms: int = 1000):
        self.pynvml, self.wait_ms = pynvml, wait_ms
        self.last = {i: 0 for i in range(count)}
        self.events = 0
        self.reason = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            self.event_set = pynvml.nvmlEventSetCreate()
            for i in range(count):
                pynvml.nvmlDeviceRegisterEvents(pynvml.nvmlDeviceGetHandleByIndex(i),
                                                pynvml.nvmlEventTypeXidCriticalError, self.event_set)
        except Exception as exc:  # NotSupported (some vGPUs, old drivers): no XID series rather than a false 0
            self.reason = f"XID events unavailable: {exc}"
            self.event_set = None
            return
        self._thread = threading.Thread(target=self._run, name="nvml-xid", daemon=True)
        self._thread.start()

    @property
    def active(self) -> bool:
        return self.event_set is not None and not self.reason

    def _run(self) -> None:
        timeout = getattr(self.pynvml, "NVMLError_Timeout", ())
        while not self._stop.is_set():
            try:
                data = self.pynvml.nvmlEventSetWait_v2(self.event_set, self.wait_ms)
            except timeout:
                continue
            except Exception as exc:
                self.reason = f"XID listener stopped: {exc}"
                log.error("%s", self.reason)
                return
            if data.eventType & self.pynvml.nvmlEventTypeXidCriticalError:
                index = int(self.pynvml.nvmlDeviceGetIndex(data.device))
                self.last[index] = int(data.eventData)
                self.events += 1
                log.warning("GPU %d: XID %d", index, data.eventData)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.event_set is not None:
            self.pynvml.nvmlEventSetFree(self.event_set)


class NvmlCollector:
    """A ``prometheus_client`` collector reading NVML on every scrape.

    Args:
        pynvml: the NVML binding (``import pynvml``); tests pass a stand-in.
    """

    def __init__(self, pynvml: Any | None = None, hostname: str | None = None, listen_xid: bool = False):
        self.hostname = hostname or socket.gethostname()
        self.reason = ""
        self.pynvml = pynvml
        self.xid: XidListener | None = None
        if self.pynvml is None:
            try:
                import pynvml as _pynvml

                self.pynvml = _pynvml
            except ImportError as exc:
                self.reason = f"nvidia-ml-py is not installed: {exc}"
        if self.pynvml is not None:
            try:
                self.pynvml.nvmlInit()
            except Exception as exc:
                self.reason = f"NVML is not available: {exc}"
                self.pynvml = None
        if self.pynvml is not None and listen_xid:
            try:
                self.xid = XidListener(self.pynvml, self.pynvml.nvmlDeviceGetCount())
            except Exception as exc:
                log.error("XID listener not started: %s", exc)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("factory_exporter_nvml_up", "1 when NVML answers, 0 otherwise (see the reason label)",
                               labels=["reason"])
        families: dict[str, Any] = {}
        count = 0
        if self.pynvml is not None:
            try:
                count = self.pynvml.nvmlDeviceGetCount()
                for i in range(count):
                    h = self.pynvml.nvmlDeviceGetHandleByIndex(i)
                    labels = [str(i), _text(self.pynvml.nvmlDeviceGetUUID(h)),
                              _text(self.pynvml.nvmlDeviceGetPciInfo(h).busId), f"nvidia{i}",
                              _text(self.pynvml.nvmlDeviceGetName(h)), self.hostname]
                    values = {**read_device(self.pynvml, h), **_optional(self.pynvml, h)}
                    if self.xid is not None and self.xid.active:
                        values["DCGM_FI_DEV_XID_ERRORS"] = float(self.xid.last.get(i, 0))
                    for name, value in values.items():
                        if name not in families:
                            families[name] = GaugeMetricFamily(name, HELP.get(name, name), labels=LABELS)
                        families[name].add_metric(labels, value)
                up.add_metric([""], 1.0)
            except Exception as exc:
                self.reason = f"NVML query failed: {exc}"
                families.clear()
                up.add_metric([self.reason], 0.0)
        else:
            up.add_metric([self.reason], 0.0)
        yield up
        gpus = GaugeMetricFamily("factory_exporter_gpus", "GPUs NVML reports on this host")
        gpus.add_metric([], float(count if families else 0))
        yield gpus
        yield from families.values()


def exposition(collector: NvmlCollector | None = None) -> str:
    """One scrape in the Prometheus text format."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(collector or NvmlCollector())
    return generate_latest(registry).decode()


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` until interrupted."""
    import time

    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    collector = NvmlCollector(listen_xid=True)
    registry.register(collector)
    start_http_server(port, addr=addr, registry=registry)
    print(f"serving NVML telemetry (DCGM names) on http://{addr}:{port}/metrics"
          + (f" — {collector.reason}" if collector.reason else "")
          + (f" — {collector.xid.reason}" if collector.xid and collector.xid.reason else ""), flush=True)
    while True:
        time.sleep(3600)

"""The NVML exporter: dcgm-exporter names and labels, a valid exposition, and the no-NVML path."""

from __future__ import annotations

import shutil
import subprocess
import types

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.exporter import LABELS, NvmlCollector, exposition


class _NotSupported(Exception):
    pass


def _fake_pynvml(n_gpus: int = 2) -> types.SimpleNamespace:
    """A stand-in for NVML where no GPU exists: the seam is the binding module, nothing above it."""
    ns = types.SimpleNamespace(
        NVML_TEMPERATURE_GPU=0, NVML_CLOCK_SM=1, NVML_CLOCK_MEM=2, NVML_MEMORY_ERROR_TYPE_CORRECTED=0,
        NVML_MEMORY_ERROR_TYPE_UNCORRECTED=1, NVML_VOLATILE_ECC=0, NVML_FI_DEV_MEMORY_TEMP=82, NVMLError=_NotSupported,
        nvmlMemory_v2=2)
    ns.nvmlInit = lambda: None
    ns.nvmlDeviceGetCount = lambda: n_gpus
    ns.nvmlDeviceGetHandleByIndex = lambda i: i
    ns.nvmlDeviceGetUUID = lambda h: f"GPU-{h:04d}"
    ns.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId=f"00000000:0{h}:00.0".encode())
    ns.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    ns.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=40 + h, memory=10)
    ns.nvmlDeviceGetMemoryInfo = lambda h, version=None: types.SimpleNamespace(used=1 << 30, free=3 << 30)
    ns.nvmlDeviceGetTemperature = lambda h, kind: 41
    ns.nvmlDeviceGetPowerUsage = lambda h: 123_664
    ns.nvmlDeviceGetClockInfo = lambda h, kind: {1: 1980, 2: 2619}[kind]
    ns.nvmlDeviceGetTotalEnergyConsumption = lambda h: 5_000_000
    ns.nvmlDeviceGetPcieReplayCounter = lambda h: 0

    def ecc(h, kind, counter):
        raise _NotSupported("ECC not supported")  # a consumer GPU: the series is left out

    ns.nvmlDeviceGetTotalEccErrors = ecc
    ns.nvmlDeviceGetFieldValues = lambda h, ids: [types.SimpleNamespace(value=types.SimpleNamespace(uiVal=55))]
    return ns


def _parse(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_dcgm_names_units_and_labels():
    text = exposition(NvmlCollector(_fake_pynvml(2), hostname="gpu-host-1"))
    metrics = _parse(text)
    for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE",
                 "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_MEMORY_TEMP", "DCGM_FI_DEV_POWER_USAGE",
                 "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_PCIE_REPLAY_COUNTER"):
        assert len(metrics[name]) == 2, name
    util = {s.labels["gpu"]: s for s in metrics["DCGM_FI_DEV_GPU_UTIL"]}
    assert util["1"].value == 41 and set(util["1"].labels) == set(LABELS)
    assert util["0"].labels == {"gpu": "0", "UUID": "GPU-0000", "pci_bus_id": "00000000:00:00.0", "device": "nvidia0",
                                "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "gpu-host-1"}
    assert metrics["DCGM_FI_DEV_POWER_USAGE"][0].value == pytest.approx(123.664)  # W, from mW
    assert metrics["DCGM_FI_DEV_FB_USED"][0].value == 1024  # MiB
    # exact dcgm-exporter names on the wire (no _total suffix), mJ as NVML reports it
    assert "\nDCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{" in text and "_total{" not in text
    assert metrics["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"][0].value == 5_000_000
    assert not any(k.startswith("DCGM_FI_DEV_ECC") for k in metrics)  # unsupported: left out, not 0
    assert "DCGM_FI_DEV_XID_ERRORS" not in metrics  # a one-off scrape has no XID listener: absent, not a fake 0
    assert metrics["factory_exporter_nvml_up"][0].value == 1


class _Timeout(Exception):
    pass


def _with_events(ns, events):
    """NVML event-set calls on the stand-in: ``events`` are delivered once, then waits time out."""
    import time

    queue = list(events)
    ns.nvmlEventTypeXidCriticalError = 8
    ns.NVMLError_Timeout = _Timeout
    ns.nvmlEventSetCreate = lambda: "event-set"
    ns.registered = []
    ns.nvmlDeviceRegisterEvents = lambda h, kinds, es: ns.registered.append((h, kinds))
    ns.nvmlDeviceGetIndex = lambda h: h
    ns.nvmlEventSetFree = lambda es: None

    def wait(es, ms):
        if queue:
            gpu, xid = queue.pop(0)
            return types.SimpleNamespace(device=gpu, eventType=8, eventData=xid)
        time.sleep(ms / 1000)
        raise _Timeout()

    ns.nvmlEventSetWait_v2 = wait
    return ns


def test_xid_listener_reports_the_last_xid_per_gpu():
    import time

    collector = NvmlCollector(_with_events(_fake_pynvml(2), [(1, 79), (1, 48)]), hostname="h", listen_xid=True)
    try:
        deadline = time.time() + 5
        while collector.xid.events < 2 and time.time() < deadline:
            time.sleep(0.01)
        xid = {s.labels["gpu"]: s.value for s in _parse(exposition(collector))["DCGM_FI_DEV_XID_ERRORS"]}
    finally:
        collector.xid.wait_ms = 1
        collector.xid.close()
    assert collector.pynvml.registered == [(0, 8), (1, 8)]
    assert xid == {"0": 0.0, "1": 48.0}  # GPU 1's last XID; GPU 0 none


def test_xid_series_left_out_when_events_are_not_supported():
    ns = _with_events(_fake_pynvml(1), [])

    def unsupported(*a):
        raise _NotSupported("Not Supported")

    ns.nvmlDeviceRegisterEvents = unsupported
    collector = NvmlCollector(ns, hostname="h", listen_xid=True)
    assert "XID events unavailable" in collector.xid.reason
    assert "DCGM_FI_DEV_XID_ERRORS" not in _parse(exposition(collector))


def test_without_nvml_it_serves_its_health_and_says_why():
    collector = NvmlCollector()  # this machine has no NVIDIA driver
    if collector.pynvml is not None:
        pytest.skip("NVML is present here")
    metrics = _parse(exposition(collector))
    (up,) = metrics["factory_exporter_nvml_up"]
    assert up.value == 0 and "NVML" in up.labels["reason"]
    assert metrics["factory_exporter_gpus"][0].value == 0
    assert not any(k.startswith("DCGM_") for k in metrics)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_exposition():
    text = exposition(NvmlCollector(_fake_pynvml(1), hostname="h"))
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_sampled_run_becomes_mlflow_metrics(monkeypatch):
    """What training and GPU benchmarks attach to their MLflow runs (NVML stand-in at the binding module)."""
    import sys
    import time

    from monitoring.nvml import TelemetrySampler, summary_metrics

    ns = _fake_pynvml(1)
    ns.nvmlShutdown = lambda: None
    monkeypatch.setitem(sys.modules, "pynvml", ns)
    with TelemetrySampler(interval_s=0.01) as sampler:
        time.sleep(0.1)
    summary = sampler.summary()
    assert summary["available"] and summary["samples"] >= 3
    metrics = summary_metrics(summary, "train_gpu")
    assert metrics["train_gpu.DCGM_FI_DEV_GPU_UTIL_mean"] == 40.0
    assert metrics["train_gpu.DCGM_FI_DEV_POWER_USAGE_max"] == pytest.approx(123.664)
    assert metrics["train_gpu.DCGM_FI_DEV_FB_USED_max"] == 1024.0
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no binding: nothing sampled, nothing logged
    with TelemetrySampler() as empty:
        pass
    assert empty.summary()["available"] is False and summary_metrics(empty.summary(), "x") == {}

"""What this host can do: is TensorRT, an NVIDIA GPU (through NVML) or ONNX Runtime here?

The one place that probes the machine. Every answer carries the reason when the
answer is no, so a skipped target says why. Probes are cached per process; nothing
heavy is imported (TensorRT is looked up, then imported only for its version).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import platform
import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    uuid: str
    pci_bus_id: str
    compute_capability: tuple[int, int]
    memory_total_mib: int
    driver: str

    @property
    def target_name(self) -> str:
        major, minor = self.compute_capability
        return f"sm_{major}{minor}"


@dataclass(frozen=True)
class Probe:
    """A yes/no answer about the host: ``value`` when yes, ``reason`` when no."""

    value: object | None
    reason: str = ""

    def __bool__(self) -> bool:
        return self.value is not None


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


@functools.cache
def gpus() -> Probe:
    """The NVIDIA GPUs NVML sees, as a list of :class:`GpuInfo` (``reason`` when none)."""
    try:
        import pynvml
    except ImportError as exc:
        return Probe(None, f"nvidia-ml-py is not installed ({exc})")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return Probe(None, f"NVML is not available: {exc} (no NVIDIA driver on this host?)")
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        found = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            found.append(GpuInfo(
                index=i, name=_text(pynvml.nvmlDeviceGetName(h)), uuid=_text(pynvml.nvmlDeviceGetUUID(h)),
                pci_bus_id=_text(pynvml.nvmlDeviceGetPciInfo(h).busId),
                compute_capability=tuple(pynvml.nvmlDeviceGetCudaComputeCapability(h)),
                memory_total_mib=pynvml.nvmlDeviceGetMemoryInfo(h).total // (1 << 20), driver=driver))
    except pynvml.NVMLError as exc:
        return Probe(None, f"NVML query failed: {exc}")
    finally:
        pynvml.nvmlShutdown()
    return Probe(found) if found else Probe(None, "NVML reports no GPU")


def first_gpu() -> GpuInfo | None:
    probe = gpus()
    return probe.value[0] if probe else None


@functools.cache
def tensorrt_version() -> Probe:
    """TensorRT's version string when ``import tensorrt`` works here."""
    if importlib.util.find_spec("tensorrt") is None:
        return Probe(None, "TensorRT is not installed on this worker (no 'tensorrt' module; "
                           "GPU workers run the NGC TensorRT image)")
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:  # a stub wheel or missing libnvinfer raises at import
        return Probe(None, f"TensorRT is installed but does not import: {type(exc).__name__}: {exc}")
    return Probe(str(trt.__version__))


@functools.cache
def onnxruntime_version() -> Probe:
    try:
        ort = importlib.import_module("onnxruntime")
    except Exception as exc:
        return Probe(None, f"onnxruntime does not import: {exc}")
    return Probe(str(ort.__version__))


def local_target() -> Probe:
    """This host's ``sm_XY`` when CUDA (a GPU through NVML) and TensorRT are both here; ``reason`` when not."""
    found, trt = gpus(), tensorrt_version()
    if not found:
        return Probe(None, f"no NVIDIA GPU on {socket.gethostname()}: {found.reason}")
    if not trt:
        return Probe(None, f"{found.value[0].name} on {socket.gethostname()}, but {trt.reason}")
    return Probe(found.value[0].target_name)


@functools.cache
def _proc_cpuinfo() -> str | None:
    """``/proc/cpuinfo`` once per process (every swap's preflight asks), or None where there is none."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_int8_kernels(cpuinfo: str | None = None) -> str:
    """Which integer kernels ONNX Runtime's fused Q/DQ (INT8) operators run on this CPU: ``x86-vnni`` (AVX-512
    VNNI or AVX-VNNI), ``x86-avx512`` or ``x86-avx2`` (u8s8 without VNNI, which saturates: the same INT8 graph
    computes different numbers, docs/gates.md "INT8 on CPUs without VNNI"), else the machine (``aarch64``…).
    ``cpuinfo``: the text of ``/proc/cpuinfo`` (read here when None; absent off Linux)."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return machine or "unknown"
    if cpuinfo is None:
        cpuinfo = _proc_cpuinfo()
        if cpuinfo is None:
            return "x86-unknown"
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                      if line.startswith("flags")), []))
    if flags & {"avx512_vnni", "avx_vnni"}:
        return "x86-vnni"
    return "x86-avx512" if "avx512bw" in flags else "x86-avx2" if "avx2" in flags else "x86-other"


def host_facts() -> dict[str, object]:
    """Host description recorded in manifests and benchmark reports."""
    gpu = first_gpu()
    facts: dict[str, object] = {"hostname": socket.gethostname(), "machine": platform.machine(),
                                "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                                "cpu_int8": cpu_int8_kernels(), "gpu": None, "driver": None}
    if gpu is not None:
        facts.update(gpu=gpu.name, driver=gpu.driver, gpu_uuid=gpu.uuid,
                     compute_capability=f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}")
    else:
        facts["gpu_reason"] = gpus().reason
    return facts

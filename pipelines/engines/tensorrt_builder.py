"""GPU targets (``sm_XY``): a serialized TensorRT engine built through Polygraphy's loaders.

The parent side (``TensorRTBuilder``) is pure logic, testable without TensorRT: can
this worker build the target, which precision switches does the TensorRT version
take, where is the timing cache, what is the command. The child side
(``python -m pipelines.engines.tensorrt_builder …``, run from the engine directory)
is the thin part that needs TensorRT: parse ONNX → builder config → engine bytes.

Precision lives in the ONNX graph (FP16 graph; INT8 as ModelOpt Q/DQ):
- TensorRT 11 has only strongly typed networks: every build is ``--strongly-typed``
  and the graph's types are the engine's.
- TensorRT 10 builds weakly typed with builder flags (``trt10_flags`` in :mod:`factory_core.precisions`):
  ``--fp16`` for the FP16 graph, ``--int8 --fp16`` for the Q/DQ graph (explicit quantization; the non-quantized
  layers may run in FP16), none for FP32 (TF32 stays off so FP32 means FP32).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from factory_core.availability import first_gpu, gpus, tensorrt_version
from factory_core.config import TargetConfig
from factory_core.precisions import precision as precision_spec

from .base import RESULT, SOURCE_ONNX, BuildSpec, EngineBuildError, parse_shape_arg, shape_arg

ENGINE_FILE = "model.plan"
SUPPORTED_MAJORS = (10, 11)


def trt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise EngineBuildError(f"cannot read a TensorRT version from {version!r}") from None


def precision_switches(trt_version: str, precision: str) -> list[str]:
    """Build switches for ``precision`` under ``trt_version`` (see the module docstring)."""
    major = trt_major(trt_version)
    if major not in SUPPORTED_MAJORS:
        raise EngineBuildError(f"TensorRT {trt_version} is not supported; use 10.x or 11.x")
    if major >= 11:
        return ["--strongly-typed"]
    return list(precision_spec(precision).trt10_flags)


def timing_cache_path(store: Path, build_cc: tuple[int, int], trt_version: str) -> Path:
    """One timing cache per (build GPU compute capability, TensorRT version): tactics timed on
    one architecture or TensorRT release are not valid on another."""
    return Path(store) / "timing_cache" / f"sm_{build_cc[0]}{build_cc[1]}" / f"tensorrt-{trt_version}.cache"


def unavailable_reason(target: TargetConfig, trt: str | None, trt_reason: str,
                       gpu_cc: tuple[int, int] | None, gpu_reason: str) -> str | None:
    """Why a worker with TensorRT ``trt`` and a GPU of ``gpu_cc`` cannot build ``target``; None if it can."""
    reasons = []
    if trt is None:
        reasons.append(trt_reason)
    elif trt_major(trt) not in SUPPORTED_MAJORS:
        reasons.append(f"TensorRT {trt} is not supported (10.x or 11.x)")
    want = target.compute_capability
    if gpu_cc is None:
        reasons.append(f"no NVIDIA GPU on this worker ({gpu_reason})")
    elif want is not None and gpu_cc != want:
        have = f"sm_{gpu_cc[0]}{gpu_cc[1]}"
        if target.hardware_compatibility == "ampere_plus" and gpu_cc >= (8, 0) and want >= (8, 0):
            pass  # an Ampere+-compatible engine builds on any Ampere-or-later GPU
        elif target.hardware_compatibility == "ampere_plus":
            reasons.append(f"ampere_plus engines need an sm_80+ GPU; this worker has {have}")
        else:
            reasons.append(f"{target.name} engines are built on an {target.name} GPU; this worker has {have} "
                           f"(route the task to queue {target.queue!r}, or set hardware_compatibility: ampere_plus)")
    return "; ".join(reasons) or None


class TensorRTBuilder:
    backend = "tensorrt"
    engine_file = ENGINE_FILE

    def __init__(self, store: Path, trt: str | None = None, gpu_cc: tuple[int, int] | None = None):
        """Probe the worker unless ``trt`` / ``gpu_cc`` are given (tests give them)."""
        self.store = Path(store)
        probe = tensorrt_version()
        self.trt = trt if trt is not None else (probe.value if probe else None)
        self.trt_reason = probe.reason
        gpu = first_gpu()
        self.gpu_cc = gpu_cc if gpu_cc is not None else (gpu.compute_capability if gpu else None)
        self.gpu_reason = gpus().reason
        self.script = [sys.executable, "-m", __name__]
        """The child build program; tests point it at a stand-in where TensorRT is absent."""

    def unavailable_reason(self, target: TargetConfig) -> str | None:
        if target.backend != "tensorrt":
            return f"target {target.name} uses backend {target.backend}"
        return unavailable_reason(target, self.trt, self.trt_reason, self.gpu_cc, self.gpu_reason)

    def backend_version(self) -> str:
        return str(self.trt)

    def compute_capability(self, target: TargetConfig) -> str | None:
        cc = target.compute_capability
        return f"{cc[0]}.{cc[1]}" if cc else None

    def timing_cache(self) -> Path:
        assert self.gpu_cc is not None and self.trt is not None
        return timing_cache_path(self.store, self.gpu_cc, self.trt)

    def command(self, spec: BuildSpec) -> list[str]:
        assert self.trt is not None
        cmd = [*self.script, "--onnx", SOURCE_ONNX, "--out", ENGINE_FILE,
               *precision_switches(self.trt, spec.precision),
               "--workspace-mib", str(spec.options["workspace_mib"]),
               "--opt-level", str(spec.options["builder_optimization_level"]),
               "--hardware-compatibility", spec.target.hardware_compatibility]
        for name, s in spec.profile.items():
            cmd += ["--min", shape_arg(name, s.min), "--opt", shape_arg(name, s.opt), "--max", shape_arg(name, s.max)]
        if self.gpu_cc is not None:
            cmd += ["--timing-cache", str(self.timing_cache())]
        return cmd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build a TensorRT engine from ONNX through Polygraphy")
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--strongly-typed", action="store_true")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--min", action="append", default=[], help="NAME:D0xD1… (one per input)")
    ap.add_argument("--opt", action="append", default=[])
    ap.add_argument("--max", action="append", default=[])
    ap.add_argument("--workspace-mib", type=int, default=1024)
    ap.add_argument("--opt-level", type=int, default=3)
    ap.add_argument("--hardware-compatibility", default="none",
                    choices=["none", "ampere_plus", "same_compute_capability"])
    ap.add_argument("--timing-cache", default=None, help="loaded when present, then saved (merged)")
    args = ap.parse_args(argv)

    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

    profile = Profile()
    for lo, mid, hi in zip(args.min, args.opt, args.max, strict=True):
        name, lo_s = parse_shape_arg(lo)
        profile.add(name, min=lo_s, opt=parse_shape_arg(mid)[1], max=parse_shape_arg(hi)[1])
    hw = None
    if args.hardware_compatibility != "none":
        hw = getattr(trt.HardwareCompatibilityLevel, args.hardware_compatibility.upper())
    cache = args.timing_cache
    if cache:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
    config = CreateConfig(
        fp16=args.fp16 or None, int8=args.int8 or None, profiles=[profile],
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: args.workspace_mib << 20},
        builder_optimization_level=args.opt_level, hardware_compatibility_level=hw,
        load_timing_cache=cache if cache and os.path.exists(cache) else None)
    network = NetworkFromOnnxPath(args.onnx, strongly_typed=args.strongly_typed or None)
    engine_bytes = EngineBytesFromNetwork(network, config=config, save_timing_cache=cache)()
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.partial")
    tmp.write_bytes(bytes(engine_bytes))
    tmp.replace(out)
    Path(RESULT).write_text(json.dumps({"tensorrt": trt.__version__, "strongly_typed": args.strongly_typed,
                                        "fp16_flag": args.fp16, "int8_flag": args.int8}, indent=2))
    print(f"wrote {out} ({out.stat().st_size} bytes) with TensorRT {trt.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``cpu`` target: ONNX Runtime's optimized graph, saved, with the session options it was made with.

``python -m pipelines.engines.onnxruntime_builder --onnx model.onnx --out model.ort.onnx …``
is the build: it optimizes the graph once at build time (so serving hosts skip that
work at load), checks the saved model loads and gives finite outputs at the
profile's opt shape, and writes the session options to ``build_result.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from factory_core.availability import onnxruntime_version
from factory_core.config import TargetConfig, is_cpu_target

from .base import RESULT, SOURCE_ONNX, BuildSpec, parse_shape_arg, shape_arg

ENGINE_FILE = "model.ort.onnx"
_LEVELS = ("basic", "extended", "all")


class OnnxRuntimeBuilder:
    backend = "onnxruntime"
    engine_file = ENGINE_FILE

    def unavailable_reason(self, target: TargetConfig) -> str | None:
        if not is_cpu_target(target.name):
            return f"backend onnxruntime builds only cpu targets, not {target.name}"
        probe = onnxruntime_version()
        return None if probe else probe.reason

    def backend_version(self) -> str:
        return str(onnxruntime_version().value)

    def compute_capability(self, target: TargetConfig) -> str | None:
        return None

    def command(self, spec: BuildSpec) -> list[str]:
        cmd = [sys.executable, "-m", __name__, "--onnx", SOURCE_ONNX, "--out", ENGINE_FILE,
               "--opt-level", str(spec.options["graph_optimization_level"]),
               "--threads", str(spec.options["intra_op_threads"])]
        for name, shapes in spec.profile.items():
            cmd += ["--check-shape", shape_arg(name, shapes.opt)]
        return cmd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Optimize an ONNX graph for the ONNX Runtime CPU target")
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--opt-level", choices=sorted(_LEVELS), default="extended")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--check-shape", action="append", default=[], help="NAME:D0xD1… run once at this shape")
    args = ap.parse_args(argv)

    import numpy as np
    import onnxruntime as ort

    from model_registry.runners import OnnxRuntimeRunner

    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.partial")
    # Loading the source with these options writes the optimized graph (the session options a serving host uses).
    OnnxRuntimeRunner(args.onnx, args.threads, args.opt_level, save_optimized=tmp).activate().close()
    # The saved graph is already optimized: load it as a serving host would (the same runner), and run it once.
    rng = np.random.default_rng(0)
    feeds = {}
    for text in args.check_shape:
        name, shape = parse_shape_arg(text)
        feeds[name] = rng.standard_normal(shape).astype(np.float32)
    if feeds:
        with OnnxRuntimeRunner(tmp, args.threads, args.opt_level) as runner:
            outputs = runner.infer_named(feeds)
        for name, value in outputs.items():
            if not np.all(np.isfinite(value)):
                print(f"output {name} is not finite on a random input at the opt shape", file=sys.stderr)
                return 3
    tmp.replace(out)
    Path(RESULT).write_text(json.dumps({"session_options": {
        "graph_optimization_level": args.opt_level, "intra_op_num_threads": args.threads, "inter_op_num_threads": 1,
        "execution_mode": "sequential", "providers": ["CPUExecutionProvider"]}}, indent=2))
    print(f"wrote {out} ({out.stat().st_size} bytes) with onnxruntime {ort.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

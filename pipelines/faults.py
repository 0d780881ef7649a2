"""Planted faults: the broken engines and graphs the gates must catch.

Each one is a realistic failure, not a random one: an engine whose outputs are offset by a constant
(a wrong bias fold), one that emits NaN on rare inputs (an overflow on extreme values), one that is
slow, an INT8 graph with one miscalibrated scale, an engine built from another graph. Used by the gate
tests and by ``benchmarks/gate_reliability.py``; nothing in a night imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from factory_core.contracts import MANIFEST

from .export import INPUT_NAME, OUTPUT_NAME


def _load(src: Path):
    import onnx

    return onnx.load(str(src))


def _save(model, dest: Path) -> Path:
    import onnx

    onnx.checker.check_model(model)
    onnx.save(model, str(dest))
    return dest


def _rewire_output(model, suffix: str) -> str:
    """Rename the graph's ``prob`` producer output to ``prob<suffix>`` and return that name."""
    inner = f"{OUTPUT_NAME}{suffix}"
    for node in model.graph.node:
        node.output[:] = [inner if o == OUTPUT_NAME else o for o in node.output]
        node.input[:] = [inner if i == OUTPUT_NAME else i for i in node.input]
    return inner


def shift_outputs(src: Path, dest: Path, delta: float) -> Path:
    """Every output moved by ``delta`` (clipped to [0, 1]): AUC cannot see it, decisions at a threshold can."""
    from onnx import TensorProto, helper

    model = _load(src)
    inner = _rewire_output(model, "__unshifted")
    model.graph.initializer.extend([helper.make_tensor("fault_delta", TensorProto.FLOAT, [], [delta]),
                                    helper.make_tensor("fault_zero", TensorProto.FLOAT, [], [0.0]),
                                    helper.make_tensor("fault_one", TensorProto.FLOAT, [], [1.0])])
    model.graph.node.extend([helper.make_node("Add", [inner, "fault_delta"], ["fault_shifted"]),
                             helper.make_node("Clip", ["fault_shifted", "fault_zero", "fault_one"], [OUTPUT_NAME])])
    return _save(model, dest)


def nan_on_rare_inputs(src: Path, dest: Path, feature: int, above: float) -> Path:
    """NaN outputs wherever feature ``feature`` exceeds ``above`` anywhere in the window (rare inputs)."""
    from onnx import TensorProto, helper

    model = _load(src)
    rank = len(model.graph.input[0].type.tensor_type.shape.dim)
    inner = _rewire_output(model, "__finite")
    model.graph.initializer.extend([
        helper.make_tensor("fault_idx", TensorProto.INT64, [1], [feature]),
        helper.make_tensor("fault_axes", TensorProto.INT64, [rank - 1], list(range(1, rank))),
        helper.make_tensor("fault_one_axis", TensorProto.INT64, [1], [1]),
        helper.make_tensor("fault_above", TensorProto.FLOAT, [], [above]),
        helper.make_tensor("fault_nan", TensorProto.FLOAT, [], [float("nan")])])
    model.graph.node.extend([
        helper.make_node("Gather", [INPUT_NAME, "fault_idx"], ["fault_col"], axis=rank - 1),
        helper.make_node("ReduceMax", ["fault_col", "fault_axes"], ["fault_max"], keepdims=0),
        helper.make_node("Unsqueeze", ["fault_max", "fault_one_axis"], ["fault_max2"]),
        helper.make_node("Greater", ["fault_max2", "fault_above"], ["fault_rare"]),
        helper.make_node("Where", ["fault_rare", "fault_nan", inner], [OUTPUT_NAME])])
    return _save(model, dest)


def rare_threshold(x: np.ndarray, feature: int, share: float) -> float:
    """The largest value of ``feature``'s window maximum that at least ``share`` of the windows ``x`` exceed.

    Overlapping windows share their extreme tick, so the maxima tie: a plain quantile can leave no window
    above it. The planted fault then fires on a few windows (at least one), never on none.
    """
    per_window = x[..., feature].reshape(len(x), -1).max(axis=1)
    want = max(1, int(round(share * len(x))))
    values = np.unique(per_window)[::-1]
    for v in values[1:]:
        if int((per_window > v).sum()) >= want:
            return float(v)
    return float(values[-1])


def slow_down(src: Path, dest: Path, size: int = 384, repeats: int = 6) -> Path:
    """The same outputs after ``repeats`` input-dependent ``size``×``size`` matrix products (a bad tactic)."""
    from onnx import TensorProto, helper

    model = _load(src)
    inner = _rewire_output(model, "__fast")
    w = np.random.default_rng(0).normal(0, 1 / size, (size, size)).astype(np.float32)
    model.graph.initializer.extend([helper.make_tensor("fault_w", TensorProto.FLOAT, [size, size], w.ravel()),
                                    helper.make_tensor("fault_zero", TensorProto.FLOAT, [], [0.0])])
    nodes = [helper.make_node("ReduceSum", [INPUT_NAME], ["fault_s"], keepdims=0),
             helper.make_node("Mul", ["fault_w", "fault_s"], ["fault_m0"])]
    for k in range(repeats):
        nodes.append(helper.make_node("MatMul", [f"fault_m{k}", "fault_w"], [f"fault_m{k + 1}"]))
    nodes += [helper.make_node("ReduceSum", [f"fault_m{repeats}"], ["fault_t"], keepdims=0),
              helper.make_node("Mul", ["fault_t", "fault_zero"], ["fault_z"]),
              helper.make_node("Add", [inner, "fault_z"], [OUTPUT_NAME])]
    model.graph.node.extend(nodes)
    return _save(model, dest)


def activation_scales(src: Path) -> list[str]:
    """Names of the activation (not weight) scale initializers of an INT8 Q/DQ graph."""
    model = _load(src)
    inits = {i.name for i in model.graph.initializer}
    return sorted({n.input[1] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits
                   and n.input[1] in inits})


def scale_one(src: Path, dest: Path, scale_name: str, factor: float) -> Path:
    """One Q/DQ scale multiplied by ``factor`` (×16: a range 16× too wide; ÷16: clipping)."""
    from onnx import numpy_helper

    model = _load(src)
    for init in model.graph.initializer:
        if init.name == scale_name:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), scale_name))
            return _save(model, dest)
    raise KeyError(f"no initializer {scale_name!r} in {src}")


def replace_engine(engine_dir: Path, new_engine: Path) -> None:
    """Swap the engine file of a built engine directory and re-hash it in the manifest (a miscompiled engine
    whose manifest is consistent: only its outputs can tell)."""
    from factory_core.fsutil import sha256_file

    manifest = json.loads((engine_dir / MANIFEST).read_text())
    target = engine_dir / manifest["engine_file"]
    target.write_bytes(Path(new_engine).read_bytes())
    manifest["sha256"]["engine"] = sha256_file(target)
    if manifest.get("files"):
        manifest["files"][manifest["engine_file"]] = manifest["sha256"]["engine"]
    (engine_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))


def rebase(record, old: str, new: str):
    """``record`` with every URI under ``old`` moved under ``new`` (a copied run's records)."""
    return type(record).model_validate_json(record.model_dump_json().replace(old, new))


def gate_planted(cfg, p, vs, target: str, workdir: Path, plant=None):
    """Re-run the accuracy gate and ``gate_<target>`` of one family on a copy of a finished (local) run, after
    ``plant(run)`` has broken something in the copy. Returns the target's record."""
    import shutil

    from factory_core.contracts import EngineResult, Status

    from . import stages

    run = Path(workdir) / "run"
    shutil.copytree(p.run_uri, run)
    p, vs = rebase(p, p.run_uri, str(run)), rebase(vs, p.run_uri, str(run))
    if plant is not None:
        plant(run)
    folder = run / vs.family / "engines" / target
    built = [EngineResult(family=vs.family, precision=d.name, target=target, status=Status.OK, engine_dir=str(d),
                          backend=json.loads((d / MANIFEST).read_text())["backend"])
             for d in sorted(folder.iterdir()) if (d / MANIFEST).is_file()] if folder.is_dir() else []
    return stages.gate_target(cfg, p, stages.gate_accuracy(cfg, p, vs), built, target)


def in_engine(family: str, target: str, precision: str, make):
    """A plant for :func:`gate_planted`: ``make(engine's source ONNX, dest)`` writes the broken engine."""
    def plant(run: Path) -> None:
        engine_dir = run / family / "engines" / target / precision
        tmp = engine_dir.parent / f".planted-{precision}.onnx"
        make(engine_dir / "model.onnx", tmp)
        replace_engine(engine_dir, tmp)
        tmp.unlink()
    return plant

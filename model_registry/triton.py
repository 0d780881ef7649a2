"""A Triton model repository view of a family's champions: one model, one plan per compute capability.

``config.pbtxt`` maps each compute capability to its plan with ``cc_model_filenames``
(Triton picks the file for the GPU it runs on), sets ``default_model_filename``, and
turns on dynamic batching from the engine's optimization profile (max batch, opt batch
preferred). Without GPU champions the CPU engine is written as an ONNX Runtime model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from factory_core.config import AUTO, COMPUTE_CAPABILITIES, FactoryConfig, TargetConfig
from factory_core.contracts import Manifest

from .registry import CHAMPION, NoSuchAlias, Registry, RegistryError
from .store import open_store

_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64"}


def _dims(shape: list) -> str:
    return "[ " + ", ".join(str(d) if isinstance(d, int) else "-1" for d in shape[1:]) + " ]"


def config_pbtxt(family: str, manifests: dict[str, Manifest], max_queue_delay_us: int = 100) -> str:
    """``manifests``: plan file name → manifest (all for one family)."""
    any_m = next(iter(manifests.values()))
    gpu = any_m.backend == "tensorrt"
    prof = any_m.inputs[0].profile
    lines = [f'name: "{family}"', f'platform: "{"tensorrt_plan" if gpu else "onnxruntime_onnx"}"',
             f"max_batch_size: {prof['max'][0]}"]
    for kind, tensors in (("input", any_m.inputs), ("output", any_m.outputs)):
        for t in tensors:
            lines.append(f'{kind} [ {{ name: "{t.name}" data_type: {_DTYPES[t.dtype]} dims: {_dims(t.shape)} }} ]')
    lines.append(f"dynamic_batching {{ preferred_batch_size: [ {prof['opt'][0]} ] "
                 f"max_queue_delay_microseconds: {max_queue_delay_us} }}")
    lines.append(f"instance_group [ {{ kind: {'KIND_GPU' if gpu else 'KIND_CPU'} count: 1 }} ]")
    if gpu:
        for fname, m in sorted(manifests.items(), key=lambda kv: kv[1].compute_capability):
            lines.append(f'cc_model_filenames [ {{ key: "{m.compute_capability}" value: "{fname}" }} ]')
        newest = max(manifests.items(), key=lambda kv: tuple(int(p) for p in kv[1].compute_capability.split(".")))
        lines.append(f'default_model_filename: "{newest[0]}"')
    else:
        lines.append(f'default_model_filename: "{next(iter(manifests))}"')
    return "\n".join(lines) + "\n"


def write_repository(cfg: FactoryConfig, family: str, dest: Path) -> Path:
    """Write ``<dest>/<family>/{config.pbtxt, 1/<plans>}`` from the family's champions."""
    registry, store = Registry(cfg.tracking_uri), open_store(cfg.store_uri, cfg.registry.s3_endpoint_url)
    champions = {}
    declared = [t for t in cfg.declared_targets() if t.name != AUTO]
    if len(declared) < len(cfg.declared_targets()):  # ``auto``: whichever architectures workers registered
        declared += [TargetConfig(name=cc) for cc in COMPUTE_CAPABILITIES if cc not in {t.name for t in declared}]
    for t in declared:
        try:
            mv = registry.resolve(family, t.name, CHAMPION)
        except NoSuchAlias:
            continue
        champions[t.name] = (t, mv.tags["factory_version"])
    gpu = {k: v for k, v in champions.items() if v[0].backend == "tensorrt"}
    chosen = gpu or {k: v for k, v in champions.items() if k == "cpu"}
    if not chosen:
        raise RegistryError(f"{family}: no champion on any target; nothing to put in a Triton repository")
    model_dir = Path(dest) / family
    version_dir = model_dir / "1"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    version_dir.mkdir(parents=True)
    manifests = {}
    for name, (t, version) in chosen.items():
        tmp = version_dir / f".fetch-{name}"
        tmp.mkdir()
        m = store.fetch(family, name, version, tmp)
        fname = f"model.{name}.plan" if t.backend == "tensorrt" else "model.onnx"
        # Triton's onnxruntime backend optimizes at load; it gets the ORT-optimized graph
        shutil.move(tmp / m.engine_file, version_dir / fname)
        shutil.rmtree(tmp)
        manifests[fname] = m
    (model_dir / "config.pbtxt").write_text(config_pbtxt(family, manifests))
    return model_dir

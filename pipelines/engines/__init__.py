"""Engine builders, one module per backend behind :class:`pipelines.engines.base.EngineBuilder`."""

from __future__ import annotations

from pathlib import Path

from .base import EngineBuilder


def builder_for(backend: str, store: Path) -> EngineBuilder:
    """The builder of ``backend`` (``tensorrt`` or ``onnxruntime``)."""
    if backend == "onnxruntime":
        from .onnxruntime_builder import OnnxRuntimeBuilder

        return OnnxRuntimeBuilder()
    if backend == "tensorrt":
        from .tensorrt_builder import TensorRTBuilder

        return TensorRTBuilder(store)
    raise ValueError(f"unknown engine backend {backend!r}")

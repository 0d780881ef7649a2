"""One record per precision: every fact the factory holds about ``fp32``, ``fp16`` and ``int8``, in one table.

The variants (:mod:`pipelines.quantize`), the engine builders, the gates, the serving canary, the config's
defaults and the report read their precision facts here. How far a candidate may stray from FP32 PyTorch
depends on the family as well: those agreement bounds live in the family specs (:mod:`factory_core.families`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator


@dataclass(frozen=True)
class PrecisionSpec:
    name: str
    rank: int
    """A latency tie (``gates.tie_tolerance``) goes to the highest rank: the higher precision."""
    quantized: bool
    """Written from the FP32 graph by :mod:`pipelines.quantize` (what ``quantize.precisions`` may list)."""
    calibrated: bool
    """Needs a calibration set (ModelOpt Q/DQ); its sha256 is part of the engine's identity."""
    parity: tuple[float, float]
    """(atol, rtol) of an engine against its own ONNX variant: the default of ``gates.parity`` (a diagnostic);
    FP32's is also the export's parity with PyTorch (``export.parity_atol``/``parity_rtol``)."""
    canary: tuple[float, float]
    """(atol, rtol) of the serving canary: another host of the same target may pick other kernels."""
    trt10_flags: tuple[str, ...]
    """TensorRT 10 (weakly typed) builder switches; TensorRT 11 builds every precision ``--strongly-typed``."""
    marker: str
    """Marker of the accuracy-vs-p99 plot."""


PRECISIONS: dict[str, PrecisionSpec] = {p.name: p for p in (
    PrecisionSpec("fp32", rank=3, quantized=False, calibrated=False, parity=(1e-4, 1e-3), canary=(1e-4, 1e-3),
                  trt10_flags=(), marker="o"),  # TF32 stays off, so FP32 means FP32
    PrecisionSpec("fp16", rank=2, quantized=True, calibrated=False, parity=(1e-2, 1e-2), canary=(5e-3, 1e-2),
                  trt10_flags=("--fp16",), marker="s"),
    # explicit quantization; the layers left unquantized may run in FP16
    PrecisionSpec("int8", rank=1, quantized=True, calibrated=True, parity=(5e-2, 5e-2), canary=(2e-2, 5e-2),
                  trt10_flags=("--int8", "--fp16"), marker="^"),
)}
"""Highest precision first."""

REFERENCE = "fp32"
"""The precision every variant is made from and every candidate is scored against."""
QUANTIZED = tuple(n for n, p in PRECISIONS.items() if p.quantized)


def precision(name: str) -> PrecisionSpec:
    """The spec of ``name``; :class:`ValueError` naming the known ones otherwise."""
    try:
        return PRECISIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown precision {name!r}; known: {', '.join(PRECISIONS)}") from None


def _quantized(name: str) -> str:
    if not precision(name).quantized:
        raise ValueError(f"{name} is not made by quantization; choose from {', '.join(QUANTIZED)}")
    return name


def _known(name: str) -> str:
    precision(name)
    return name


PrecisionName = Annotated[str, AfterValidator(_known)]
"""A config value (or key) naming a precision of :data:`PRECISIONS`."""
QuantizedName = Annotated[str, AfterValidator(_quantized)]
"""A config value naming a precision that :mod:`pipelines.quantize` writes."""

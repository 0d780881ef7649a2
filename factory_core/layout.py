"""Every path of a night's run and of the engine store, named once, over a URI root.

A run root is a local path (the embedded default, ``$FACTORY_HOME/runs``) or ``s3://bucket/prefix`` in a
fleet. Stages write whole folders (``stage_output``) and readers find files by the URIs records carry;
this module is the one place that knows the folder names.
"""

from __future__ import annotations

from dataclasses import dataclass

from .fsutil import join

# File names inside a stage folder.
CHECKPOINT = "model.pt"
SPLITS = "splits.npz"
METRICS = "metrics.json"
HISTORY = "history.json"
TELEMETRY = "telemetry.json"
FP32_ONNX = "model.fp32.onnx"
CALIBRATION = "calibration.npy"
VARIANTS = "variants.json"
REFERENCE_OUTPUTS = "reference.npy"
REFERENCE_WINDOW = "reference.parquet"
GATE_REPORT = "report.json"
GATE_PLOT = "accuracy_vs_p99.png"
SUMMARY = "summary.json"
RECORD = "record.json"


def variant_onnx(precision: str) -> str:
    return f"model.{precision}.onnx"


@dataclass(frozen=True)
class RunLayout:
    """One night's folders under ``<runs root>/<date>``."""

    uri: str

    @classmethod
    def of(cls, runs_root: str, date: str) -> "RunLayout":
        return cls(join(runs_root, date))

    def features(self) -> str:
        return join(self.uri, "features")

    def train(self, family: str) -> str:
        return join(self.uri, family, "train")

    def onnx(self, family: str) -> str:
        return join(self.uri, family, "onnx")

    def variants(self, family: str) -> str:
        return join(self.uri, family, "variants")

    def accuracy(self, family: str) -> str:
        return join(self.uri, family, "accuracy")

    def reference(self, family: str) -> str:
        return join(self.uri, family, "reference")

    def engine(self, family: str, target: str, precision: str) -> str:
        return join(self.uri, family, "engines", target, precision)

    def gates(self) -> str:
        return join(self.uri, "gates")

    def summary(self) -> str:
        return join(self.uri, SUMMARY)

    def record(self) -> str:
        """What the night was made from (code, resolved config, lake partitions' sha256): ``factory reproduce``."""
        return join(self.uri, RECORD)

    def failures(self) -> str:
        return join(self.uri, "failures")

    def failure(self, task: str) -> str:
        """``train[fraud_risk]`` → ``failures/train.fraud_risk.json``: a key every store and URI parser takes."""
        safe = "".join(c if c.isalnum() or c in "._-" else "." for c in task).strip(".")
        return join(self.failures(), f"{safe}.json")


# The engine store: <store>/<family>/<target>/<version>/ with a commit marker; served predictions and drift reports
# live beside the versions.
STORE_COMMITTED = "_COMMITTED"


def store_version(family: str, target: str, version: str) -> str:
    return f"{family}/{target}/{version}"


def predictions(family: str, target: str) -> str:
    return f"predictions/{family}/{target}"


def drift_report(family: str, target: str, stamp: str) -> str:
    return f"drift/{family}/{target}/{stamp}"

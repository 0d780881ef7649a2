"""One base class for the factory's errors, and the one place that decides what a failure means.

Three kinds, decided by class:

- :class:`BadInput`: the input is wrong (a partition, a config key, an ONNX graph, a manifest).
  The same input fails the same way again, so a task fails at once with no retry; the message
  names what is wrong.
- :class:`Unavailable`: this host lacks what the work needs (no GPU, no TensorRT, another
  architecture). A stage turns it into a ``skipped`` record; for a ``required`` target it fails,
  with no retry (the same worker stays without it).
- everything else, :class:`FactoryError` included (a registry or store outage, a bug): retried.
"""

from __future__ import annotations


class FactoryError(Exception):
    """Base of the factory's own errors. Not final by itself: a task that raises it is retried."""


class BadInput(FactoryError):
    """Wrong input; the message names the partition, key, file or column at fault. Final: never retried."""


class Unavailable(FactoryError):
    """This host cannot do the work (no GPU, no TensorRT, no worker on a queue). Final when required."""


def is_final(exc: BaseException) -> bool:
    """Whether a task that raised ``exc`` should fail now rather than retry."""
    return isinstance(exc, (BadInput, Unavailable))

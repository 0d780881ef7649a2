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

import errno
import os


class FactoryError(Exception):
    """Base of the factory's own errors. Not final by itself: a task that raises it is retried."""


class BadInput(FactoryError):
    """Wrong input; the message names the partition, key, file or column at fault. Final: never retried."""


class Unavailable(FactoryError):
    """This host cannot do the work (no GPU, no TensorRT, no worker on a queue). Final when required."""


class DiskFull(FactoryError, OSError):
    """A write found no space left; the message says ``disk full at <path>`` and what is free there. Final: a retry
    on the same full disk fails the same way until someone makes room."""


def is_final(exc: BaseException) -> bool:
    """Whether a task that raised ``exc`` should fail now rather than retry."""
    return isinstance(exc, (BadInput, Unavailable, DiskFull))


def disk_full(exc: BaseException, where: str | os.PathLike | None = None) -> DiskFull | None:
    """A :class:`DiskFull` naming the path when ``exc`` (or an exception it was raised from) is a full disk: an
    ``OSError`` with ``ENOSPC``/``EDQUOT``, or SQLite's "database or disk is full" as SQLAlchemy wraps it.
    ``where`` names the path when the error does not (SQLite names no file)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DiskFull):
            return e
        path = None
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            path = e.filename or where
        elif "database or disk is full" in str(e):
            path = where
        if path is not None or (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)):
            return DiskFull(f"disk full at {path or 'an unnamed path'}{_free(path)}")
        e = getattr(e, "orig", None) or e.__cause__ or e.__context__
    return None


def _free(path: str | os.PathLike | None) -> str:
    import shutil
    from pathlib import Path

    if path is None:
        return ""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        usage = shutil.disk_usage(p)
    except OSError:
        return ""
    return f" ({usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.0f} MiB on its filesystem)"

"""One base class for the factory's errors, classified by what happened, not by where it was seen.

The cause decides the outcome, once, here; Airflow's retry policy (``pipelines.orchestration.retry_policy``)
and the command lines' exit codes (:func:`exit_code`) both read it:

- :class:`BadInput` (``ConfigError``, ``ManifestError``, a bad partition, an ONNX graph): the same input fails
  the same way again, so the task fails at once with no retry; the message names what is wrong. Exit 2.
- :class:`Unavailable`: this host lacks what the work needs (no GPU, no TensorRT, no worker on a queue). A stage
  turns it into a ``skipped`` record; for a ``required`` target it fails, with no retry (the same worker stays
  without it).
- :class:`DiskFull`: final until someone makes room.
- :class:`ServiceUnreachable`: a service did not answer (refused, timeout, a name server's temporary failure,
  an HTTP 5xx): retried wherever it is seen, in preflight as in publish, since the service may come back.
- :class:`LockConflict`: another holder has what this needs (a night for the same date): its own outcome,
  exit 75 (``EX_TEMPFAIL``: try again later), never "bad config".
- everything else, a plain :class:`FactoryError` or a bug: the task's ordinary retries.
"""

from __future__ import annotations

import errno
import os
import socket


class FactoryError(Exception):
    """Base of the factory's own errors. Not final by itself: a task that raises it gets its ordinary retries."""


class BadInput(FactoryError):
    """Wrong input; the message names the partition, key, file or column at fault. Final: never retried."""


class Unavailable(FactoryError):
    """This host cannot do the work (no GPU, no TensorRT, no worker on a queue). Final when required."""


class DiskFull(FactoryError, OSError):
    """A write found no space left; the message says ``disk full at <path>`` and what is free there. Final: a retry
    on the same full disk fails the same way until someone makes room."""


class ServiceUnreachable(FactoryError):
    """A service the work needs did not answer (refused, timeout, DNS temporarily failing, HTTP 5xx); the message
    names the endpoint. Retried: an outage at 02:00 may be over at 02:02. Wrong credentials, a missing bucket or a
    malformed URL are :class:`BadInput` (``ConfigError``) instead: they do not heal by waiting."""


class LockConflict(FactoryError):
    """Another holder has the lock this work needs (the message names it). Not bad input and not an outage: wait
    for the holder, then run again."""


class ManifestError(BadInput):
    """A ``manifest.json`` is missing, a symlink, not JSON, or lacks a key; the message names where and what.
    Final: the same bytes fail the same way."""


FINAL: tuple[type[BaseException], ...] = (BadInput, Unavailable, DiskFull)
"""Causes that fail a task at once: retrying cannot change the outcome."""
RETRYABLE: tuple[type[BaseException], ...] = (ServiceUnreachable, LockConflict)
"""Causes that are retried (within the task's retries) wherever they are raised."""

EXIT_BAD_INPUT = 2
EXIT_LOCKED = 75  # sysexits.h EX_TEMPFAIL: "try again later"
EXIT_FAILED = 1


def is_final(exc: BaseException) -> bool:
    """Whether a task that raised ``exc`` should fail now rather than retry."""
    return isinstance(exc, FINAL)


def is_retryable(exc: BaseException) -> bool:
    """Whether ``exc`` is a cause that is retried wherever it is seen (an outage, a lock held by another)."""
    return isinstance(exc, RETRYABLE)


def exit_code(exc: FactoryError) -> int:
    """A command line's exit code for one of the factory's errors: 2 bad input, 75 a lock conflict, 1 otherwise."""
    if isinstance(exc, BadInput):
        return EXIT_BAD_INPUT
    if isinstance(exc, LockConflict):
        return EXIT_LOCKED
    return EXIT_FAILED


def causes(exc: BaseException):
    """``exc`` and every exception it was raised from or during (``__cause__``, ``__context__``, a library's
    ``.orig``/``.reason``/``kwargs['error']``), each once: where the socket error behind a client's wrapper is."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        kwargs = getattr(e, "kwargs", None)
        for nxt in (e.__cause__, e.__context__, getattr(e, "orig", None), getattr(e, "reason", None),
                    kwargs.get("error") if isinstance(kwargs, dict) else None):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def name_not_found(exc: BaseException) -> bool:
    """True when a name server answered that the host does not exist (a typo in a URL: configuration), as opposed
    to not answering at all (``EAI_AGAIN``: an outage)."""
    return any(isinstance(e, socket.gaierror) and e.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5))
               for e in causes(exc))


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

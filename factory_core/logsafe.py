"""Credentials never reach a log: one process-wide LogRecord factory passes every record's message and traceback
through :func:`factory_core.config.redact` (``scheme://user:secret@host`` → ``scheme://***@host``).

A factory, not a handler filter: Airflow, MLflow and boto install their own handlers, and a record created by any
logger in the process passes through the factory before any of them sees it.
"""

from __future__ import annotations

import logging
import traceback

from .config import redact

_installed = False


def install_log_redaction() -> None:
    """Idempotent; call it where a process starts (the CLIs, a task's config)."""
    global _installed
    if _installed:
        return
    base = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = base(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it for logging to report
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record

    logging.setLogRecordFactory(factory)
    _installed = True

"""No credential inside a URI reaches a log line, a traceback in a log, or a failure record."""

import json
import logging

from factory_core.config import load_config
from factory_core.logsafe import install_log_redaction

SECRET = "s3cr3t-pw-4417"
URI = f"https://minio:{SECRET}@store.internal:9000/bucket"


def test_log_messages_and_their_tracebacks_are_redacted(caplog):
    install_log_redaction()
    log = logging.getLogger("some.library")  # any logger of the process, not only the factory's
    with caplog.at_level(logging.INFO):
        log.info("connecting to %s", URI)
        try:
            raise ConnectionError(f"Could not connect to the endpoint URL: {URI!r}")
        except ConnectionError:
            log.exception("upload failed")
    text = caplog.text
    assert "connecting to https://***@store.internal:9000/bucket" in text
    assert "Could not connect to the endpoint URL" in text  # the traceback is there...
    assert SECRET not in text  # ...without the password


def test_a_failure_record_is_redacted(tmp_path):
    from pipelines.orchestration import record_failure

    cfg = load_config(profile="smoke", env={"FACTORY_HOME": str(tmp_path)})
    try:
        raise RuntimeError(f"publish to {URI} failed")
    except RuntimeError as exc:
        path = record_failure(cfg, "2026-11-22", "publish[fraud_risk]", exc)
    record = json.loads(open(path).read())
    assert record["reason"] == "publish to https://***@store.internal:9000/bucket failed"
    assert SECRET not in json.dumps(record) and "RuntimeError" in record["traceback"]

"""Errors are classified by what happened, not by where: each cause → Airflow's retry decision and an exit code.

The retry rule is the one the DAGs declare (``pipelines.orchestration.retry_policy``, Airflow's
``ExceptionRetryPolicy``); the preflight cases talk to real sockets on loopback (a closed port, a small HTTP
server answering 503/401/403/404), so the classification is of the errors the clients really raise.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading

import pytest
from airflow.sdk import RetryAction

from factory_core.config import ConfigError
from factory_core.errors import (
    DiskFull,
    FactoryError,
    LockConflict,
    ManifestError,
    ServiceUnreachable,
    exit_code,
    name_not_found,
)
from pipelines.orchestration import retry_policy
from pipelines.preflight import PreflightError, check_s3, check_tracking


def _decision(exc: BaseException) -> RetryAction:
    return retry_policy().evaluate(exc, try_number=1, max_tries=3).action


def _causes():
    from model_registry.canary import SwapRefused
    from model_registry.registry import NoSuchAlias, RegistryUnavailable
    from model_registry.store import ManifestMismatch, StoreError
    from pipelines.cli.nightly import NightRunning
    from pipelines.data.validation import DataValidationError
    from pipelines.engines.base import EngineBuildError, TargetUnavailableError
    from pipelines.fleet import NoQueueWorker

    return [  # (error, retry decision, exit code)
        (ServiceUnreachable("engine store s3://b at http://s3:9000 is unreachable: refused"), RetryAction.RETRY, 1),
        (RegistryUnavailable("http://mlflow: timeout"), RetryAction.RETRY, 1),
        (NightRunning("a night for 2026-11-22 is already running"), RetryAction.RETRY, 75),
        (LockConflict("held"), RetryAction.RETRY, 75),
        (ConfigError("data.tick_per_day: unknown key"), RetryAction.FAIL, 2),
        (PreflightError("engine store: missing bucket 'b'"), RetryAction.FAIL, 2),
        (ManifestError("x: malformed manifest.json: not valid JSON"), RetryAction.FAIL, 2),
        (ManifestMismatch("x: manifest.json has sha256 a, registry recorded b"), RetryAction.FAIL, 2),
        (SwapRefused("manifest", "x"), RetryAction.FAIL, 2),
        (DataValidationError("market/date=2026-11-20/symbol=ESZ6", "bid_px_1", "negative"), RetryAction.FAIL, 2),
        (EngineBuildError("bad graph"), RetryAction.FAIL, 2),
        (TargetUnavailableError("no GPU"), RetryAction.FAIL, 1),
        (NoQueueWorker("target sm_90 is required: no worker on queue gpu_sm_90"), RetryAction.FAIL, 1),
        (DiskFull("disk full at /x"), RetryAction.FAIL, 1),
        (StoreError("s3://b: cannot download model.onnx"), RetryAction.DEFAULT, 1),  # ordinary retries
        (NoSuchAlias("no champion"), RetryAction.DEFAULT, 1),
        (FactoryError("other"), RetryAction.DEFAULT, 1),
    ]


def test_each_cause_has_one_retry_decision_and_one_exit_code():
    for exc, action, code in _causes():
        assert (_decision(exc), exit_code(exc)) == (action, code), type(exc).__name__
    assert _decision(RuntimeError("a bug")) == RetryAction.DEFAULT


def test_no_config_error_is_an_outage():
    """An unreachable service is never a ``ConfigError`` (which would make it final)."""
    for exc, action, _ in _causes():
        if action == RetryAction.RETRY:
            assert not isinstance(exc, ConfigError), type(exc).__name__


def test_the_policy_is_declared_once_on_every_task_of_both_dags():
    """Airflow's own ExceptionRetryPolicy, the same rules in both DAGs' default_args (checked in tests/dags too)."""
    from airflow.sdk import ExceptionRetryPolicy

    p = retry_policy()
    assert isinstance(p, ExceptionRetryPolicy)
    rules = p.serialize()["rules"]
    assert [r["action"] for r in rules] == ["fail", "retry"]
    assert "factory_core.errors.ServiceUnreachable" in rules[1]["exception"]
    assert "factory_core.errors.BadInput" in rules[0]["exception"]


def test_a_name_that_does_not_exist_is_config_a_name_server_down_is_an_outage():
    def wrapped(err: socket.gaierror) -> Exception:
        try:
            try:
                raise err
            except OSError as inner:
                raise RuntimeError("Could not connect to the endpoint URL") from inner
        except RuntimeError as outer:
            return outer

    assert name_not_found(wrapped(socket.gaierror(socket.EAI_NONAME, "Name or service not known")))
    assert not name_not_found(wrapped(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Answer(http.server.BaseHTTPRequestHandler):
    status = 200

    def _reply(self):
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _reply

    def log_message(self, *args):
        pass


@pytest.fixture
def answering():
    """``answer(status) -> url``: a loopback HTTP server that answers every request with ``status``."""
    servers = []

    def start(status: int) -> str:
        handler = type("Handler", (_Answer,), {"status": status})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_tracking_server_outage_is_retried_and_its_refusals_are_config(answering):
    with pytest.raises(ServiceUnreachable, match="is unreachable: refused"):
        check_tracking(f"http://127.0.0.1:{_closed_port()}", 2)
    with pytest.raises(ServiceUnreachable, match="HTTP 503 on /health"):
        check_tracking(answering(503), 2)
    with pytest.raises(PreflightError, match="credentials refused"):
        check_tracking(answering(401), 2)
    with pytest.raises(PreflightError, match="HTTP 404 on /health"):
        check_tracking(answering(404), 2)
    check_tracking(answering(200), 2)


def test_object_store_outage_is_retried_and_its_refusals_are_config(answering, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    what = "engine store (registry.store_uri)"
    with pytest.raises(ServiceUnreachable, match="is unreachable: refused"):
        check_s3("s3://b/engines", f"http://127.0.0.1:{_closed_port()}", 2, what)
    with pytest.raises(ServiceUnreachable, match="answered 503"):
        check_s3("s3://b/engines", answering(503), 2, what)
    with pytest.raises(PreflightError, match="credentials refused"):
        check_s3("s3://b/engines", answering(403), 2, what)
    with pytest.raises(PreflightError, match="missing bucket 'b'"):
        check_s3("s3://b/engines", answering(404), 2, what)
    check_s3("s3://b/engines", answering(200), 2, what)


def test_one_reader_one_error_for_a_malformed_manifest(tmp_path):
    """The engine builder's check, the store and the serving canary read manifests through one function and meet
    a malformed one as the same ManifestError (the canary refuses the swap with it as the cause)."""
    from factory_core.contracts import read_manifest
    from model_registry.canary import SwapRefused
    from model_registry.canary import read_manifest as canary_read
    from model_registry.store import LocalStore
    from pipelines.engines.base import verify_manifest

    for text, problem in (("{not json", "not valid JSON"), (json.dumps({"family": "fraud_risk"}), "key 'version'"),
                          ("[]", "expected an object")):
        folder = tmp_path / f"engine{len(problem)}"
        folder.mkdir()
        (folder / "manifest.json").write_text(text)
        seen = []
        for read in (read_manifest, verify_manifest, lambda f: LocalStore(tmp_path / "store").put_version(
                f, "fraud_risk", "cpu", "v1")):
            with pytest.raises(ManifestError, match=f"malformed manifest.json: {problem}") as err:
                read(folder)
            seen.append(str(err.value))
        with pytest.raises(SwapRefused) as refused:
            canary_read(folder)
        assert refused.value.kind == "manifest" and isinstance(refused.value.__cause__, ManifestError)
        assert all("\n" not in s for s in seen)
    with pytest.raises(ManifestError, match="no manifest.json"):
        verify_manifest(tmp_path)

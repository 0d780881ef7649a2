"""Preflight: reach every service a night needs before any work, with short timeouts, and bound every client.

A night that cannot reach its tracking server, engine store, run root or lake fails in its first
task, naming the endpoint and what failed (refused, timeout, DNS, credentials, missing bucket),
never a secret. What failed decides what happens next (:mod:`factory_core.errors`): a service that does
not answer (refused, timeout, a name server's temporary failure, HTTP 5xx) is
:class:`~factory_core.errors.ServiceUnreachable` and the task retries, as it would in ``publish``; wrong
credentials, a missing bucket, a host name that does not exist or a wrong path are :class:`PreflightError`
(configuration: final). :func:`apply_client_limits` sets the MLflow client's retries and timeouts from the
config, so one call's worst case is bounded and stated (docs/registry.md), and Airflow's retries
multiply a known figure instead of MLflow's own retry loop.
"""

from __future__ import annotations

import os
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from factory_core.config import ConfigError, FactoryConfig, redact
from factory_core.errors import FactoryError, ServiceUnreachable, causes, disk_full, name_not_found


class PreflightError(ConfigError):
    """A service the night needs refuses us or is named wrong (credentials, bucket, host name, path); the message
    names the endpoint and the failure. Final: the configuration must be fixed first. An outage is
    :class:`~factory_core.errors.ServiceUnreachable` instead."""


S3_OUTAGE_CODES = frozenset({"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "503", "500",
                             "502", "504"})
"""S3 error codes that say the service is struggling, not that the request is wrong."""


def apply_client_limits(cfg: FactoryConfig) -> None:
    """MLflow's HTTP retries and timeouts from ``registry.*`` (environment variables MLflow reads per request),
    and the one object-store endpoint (``registry.s3_endpoint_url``) for every S3 client of the process: the run
    root and the lake (pyarrow) and boto3 honour ``AWS_ENDPOINT_URL``."""
    r = cfg.registry
    if r.s3_endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = r.s3_endpoint_url
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(r.http_max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(r.http_timeout_s))
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = str(r.http_backoff_s)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0.5"


def worst_case_call_s(cfg: FactoryConfig) -> float:
    """One MLflow request's worst case: every attempt times out, plus urllib3's backoff between attempts."""
    r = cfg.registry
    backoff = sum(r.http_backoff_s * 2 ** k for k in range(r.http_max_retries))
    return r.http_timeout_s * (r.http_max_retries + 1) + backoff + 0.5 * r.http_max_retries


def _why(exc: BaseException) -> str:
    """refused | timeout | DNS | … from a socket/urllib/botocore error (the socket error behind its wrappers)."""
    chain = list(causes(exc))
    for e in chain:
        if isinstance(e, socket.gaierror):
            return f"DNS: cannot resolve the host ({e.strerror})"
    for e in chain:
        if isinstance(e, ConnectionRefusedError):
            return "refused: nothing listens on that port"
    if any(isinstance(e, (TimeoutError, socket.timeout)) or "timed out" in str(e) for e in chain):
        return "timeout: no answer"
    reason = getattr(exc, "reason", exc)
    return f"{type(reason).__name__}: {reason}"


def _unreachable_or_misnamed(where: str, exc: BaseException) -> FactoryError:
    """An endpoint that did not answer: a name that does not exist is configuration; anything else an outage."""
    if name_not_found(exc):
        return PreflightError(f"{where}: {_why(exc)}")
    return ServiceUnreachable(f"{where} is unreachable: {_why(exc)}")


def check_tracking(uri: str, timeout_s: float) -> None:
    if uri.startswith("sqlite:///"):
        _check_writable(Path(uri[len("sqlite:///"):]).parent, "registry.tracking_uri")
        return
    if not uri.startswith(("http://", "https://")):
        return  # databricks, file stores…: MLflow reports its own errors
    url = uri.rstrip("/") + "/health"
    where = f"tracking server {redact(uri)} (registry.tracking_uri)"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout_s):
            pass
    except urllib.error.HTTPError as exc:  # it answered: 5xx is the server struggling, 4xx is us asking wrong
        if exc.code >= 500:
            raise ServiceUnreachable(f"{where}: HTTP {exc.code} on /health") from None
        what = "credentials refused" if exc.code in (401, 403) else f"HTTP {exc.code} on /health (wrong URL?)"
        raise PreflightError(f"{where}: {what}") from None
    except (urllib.error.URLError, OSError) as exc:
        if any(isinstance(e, ssl.SSLError) for e in causes(exc)):  # a certificate does not heal by waiting
            raise PreflightError(f"{where}: TLS: {getattr(exc, 'reason', exc)}") from None
        raise _unreachable_or_misnamed(where, exc) from None


def check_s3(uri: str, endpoint_url: str | None, timeout_s: float, what: str) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        NoCredentialsError,
        ReadTimeoutError,
        SSLError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

    bucket = uri[len("s3://"):].split("/", 1)[0]
    where = f"{what} {uri} at {redact(endpoint_url) if endpoint_url else 'AWS'}"
    client = boto3.client("s3", endpoint_url=endpoint_url, config=Config(
        connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 1, "mode": "standard"}))
    try:
        client.head_bucket(Bucket=bucket)
    except NoCredentialsError:
        raise PreflightError(f"{where}: credentials: none found (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a "
                             f"profile or an instance role)") from None
    except ClientError as exc:  # it answered
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise PreflightError(f"{where}: missing bucket {bucket!r}") from None
        if status in (401, 403) or code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise PreflightError(f"{where}: credentials refused ({code or status})") from None
        if (status or 0) >= 500 or code in S3_OUTAGE_CODES:
            raise ServiceUnreachable(f"{where}: the store answered {code or status} (an outage)") from None
        raise PreflightError(f"{where}: {code or status}") from None
    except (ConnectTimeoutError, ReadTimeoutError):
        raise ServiceUnreachable(f"{where}: timeout: no answer within {timeout_s:g} s") from None
    except SSLError as exc:
        raise PreflightError(f"{where}: TLS: {exc}") from None
    except (BotoConnectionError, ConnectionClosedError) as exc:  # refused, reset, a proxy down, or DNS
        raise _unreachable_or_misnamed(where, exc) from None
    except BotoCoreError as exc:
        raise PreflightError(f"{where}: {type(exc).__name__}") from None


def check_store_reachable_by_registry(tracking_uri: str, store_uri: str) -> None:
    """A tracking server (``http(s)://``) with an engine store on a local path is refused before any work.

    An MLflow server refuses a model version whose source is a path on the client's disk ("Invalid model version
    source"), so the night would fail at publish after writing the store; and no serving host could reach that
    path anyway. A path store goes with a tracking URI on the same disk (``sqlite:///``, ``file:``)."""
    if tracking_uri.startswith(("http://", "https://")) and not store_uri.startswith("s3://"):
        raise PreflightError(f"engine store (registry.store_uri) {store_uri} is a local path, but the registry "
                             f"(registry.tracking_uri) is a tracking server at {redact(tracking_uri)}: the server "
                             f"refuses model versions whose source is a path on this host, and serving hosts could "
                             f"not reach it. Use an s3:// store (S3 or MinIO) with a tracking server, or a sqlite:/// "
                             f"tracking URI with a path store.")


def _check_writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".preflight-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        full = disk_full(exc, folder)
        if full is not None:  # a full disk is not a configuration error
            raise full from None
        raise PreflightError(f"{what} {folder}: not writable ({exc.strerror})") from None


def preflight(cfg: FactoryConfig) -> list[str]:
    """Reach the tracking server, the engine store, the run root and the lake; returns what was checked."""
    timeout = cfg.registry.preflight_timeout_s
    checked = []
    check_tracking(cfg.tracking_uri, timeout)
    check_store_reachable_by_registry(cfg.tracking_uri, cfg.store_uri)
    checked.append(f"tracking {redact(cfg.tracking_uri)}")
    for uri, what in ((cfg.store_uri, "engine store (registry.store_uri)"), (cfg.lake_uri, "lake (data.lake_uri)"),
                      (cfg.runs_root, "run root (runs.root)")):
        if uri.startswith("s3://"):
            check_s3(uri, cfg.registry.s3_endpoint_url, timeout, what)
        elif what.startswith("lake") and cfg.data.source == "lake":
            if not Path(uri).is_dir():
                raise PreflightError(f"{what} {uri}: no such directory (data.source is 'lake')")
        else:
            _check_writable(Path(uri), what)
        checked.append(f"{what.split(' (')[0]} {redact(uri)}")
    return checked

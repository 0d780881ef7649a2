"""Following alias moves through MLflow webhooks: the small HTTP receiver a serving host runs beside its poll.

MLflow 3 (a tracking server on a SQL backend) POSTs ``model_version_alias.created`` (an alias set or moved) and
``model_version_alias.deleted`` to every registered webhook URL: a JSON body ``{entity, action, timestamp, data:
{name, alias[, version]}}`` with the headers ``X-MLflow-Delivery-Id``, ``X-MLflow-Timestamp`` (Unix seconds) and,
when the webhook has a secret, ``X-MLflow-Signature: v1,<base64 HMAC-SHA256 over "<delivery id>.<timestamp>.<body>">``
(``mlflow/webhooks/delivery.py``).

:class:`AliasWebhook` refuses with 401, logs and counts (``refused``, and ``factory_webhook_refused_total{reason}``)
a delivery that is unsigned, wrongly signed, or dated more than ``max_age_s`` away from now (a replay). A verified
move of an alias a follower watches only wakes that follower's poll loop (:func:`model_registry.pull.watch`) at
once: what is installed is still what the registry's alias names when ``pull`` resolves it, checked against the
registered ``manifest_sha256`` and canaried, exactly as when polling. So a delivery can never choose a version,
and a delivery that never arrives costs at most the poll interval.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from factory_core.errors import BadInput

log = logging.getLogger(__name__)

SIGNATURE, TIMESTAMP, DELIVERY_ID = "X-MLflow-Signature", "X-MLflow-Timestamp", "X-MLflow-Delivery-Id"
"""MLflow's webhook headers (``mlflow.webhooks.constants``)."""
ALIAS_EVENTS = ("model_version_alias.created", "model_version_alias.deleted")
MAX_BODY = 64 * 1024
"""An alias event is ~200 bytes; anything far larger is not MLflow's and is not read."""


class Refused(Exception):
    """A delivery the receiver will not act on; ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def read_secret(path: str | Path | None) -> str:
    """The webhook secret from its file (``registry.webhook_secret_file``: a mounted secret, never the config)."""
    if path is None:
        raise BadInput("following alias moves by webhook needs registry.webhook_secret_file: a file holding the "
                       "secret the MLflow webhook was created with")
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise BadInput(f"registry.webhook_secret_file {path}: cannot read it ({exc.strerror})") from None
    if len(secret) < 16:
        raise BadInput(f"registry.webhook_secret_file {path}: the secret is {len(secret)} characters; use 16 or more "
                       f"(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return secret


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes, now: float, max_age_s: float) -> None:
    """Raise :class:`Refused` unless ``body`` carries MLflow's v1 signature made with ``secret``, dated within
    ``max_age_s`` of ``now``."""
    sig, stamp, delivery = headers.get(SIGNATURE), headers.get(TIMESTAMP), headers.get(DELIVERY_ID)
    if not (sig and stamp and delivery):
        missing = [h for h, v in ((SIGNATURE, sig), (TIMESTAMP, stamp), (DELIVERY_ID, delivery)) if not v]
        raise Refused("unsigned", f"no {', '.join(missing)} header")
    if not stamp.isdigit():
        raise Refused("malformed", f"{TIMESTAMP} {stamp[:40]!r} is not Unix seconds")
    if abs(now - int(stamp)) > max_age_s:
        raise Refused("stale", f"signed at {stamp}, {now - int(stamp):+.0f} s from now (more than {max_age_s:g} s: a "
                               f"replay, or a clock off)")
    version, _, given = sig.partition(",")
    if version != "v1":
        raise Refused("malformed", f"signature version {version[:10]!r}, not v1")
    content = f"{delivery}.{stamp}.".encode() + body
    expected = base64.b64encode(hmac.new(secret.encode(), content, hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise Refused("signature", f"delivery {delivery[:40]!r}: the HMAC does not match this host's secret")


class AliasWebhook:
    """An HTTP receiver of MLflow's alias events that wakes the followers of the moved alias.

    Args:
        secret: the webhook's secret (:func:`read_secret`).
        host, port: where to listen (port 0: any free port; :attr:`url` says which).
        path: the URL path MLflow posts to; any other path is 404.
        max_age_s: a delivery dated further than this from now is refused as ``stale``.
        metrics_registry: a Prometheus ``CollectorRegistry`` for ``factory_webhook_refused_total{reason}`` and
            ``factory_webhook_moves_total`` (the process's default registry when None).
    """

    def __init__(self, secret: str, host: str = "0.0.0.0", port: int = 0, path: str = "/mlflow-webhook",
                 max_age_s: float = 300.0, metrics_registry: Any = None):
        from prometheus_client import REGISTRY, Counter

        if not secret:
            raise BadInput("AliasWebhook needs the webhook's secret: an unsigned delivery is never acted on")
        self.secret, self.path, self.max_age_s = secret, path, max_age_s
        self.refused: collections.Counter[str] = collections.Counter()
        self.moves = 0
        registry = metrics_registry or REGISTRY
        self._refused = Counter("factory_webhook_refused", "Webhook deliveries refused, by reason (unsigned, "
                                "signature, stale, malformed)", ["reason"], registry=registry)
        self._moves = Counter("factory_webhook_moves", "Verified alias moves that woke a follower", registry=registry)
        self._followers: list[tuple[str, str, threading.Event]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{self.path}"

    def follow(self, family: str, alias: str, wake: threading.Event) -> None:
        """Set ``wake`` on every verified move of ``alias`` on any ``<family>.<target>`` (a host on ``auto`` may
        fall back to another target's engine)."""
        with self._lock:
            self._followers.append((family, alias, wake))

    def unfollow(self, wake: threading.Event) -> None:
        with self._lock:
            self._followers = [f for f in self._followers if f[2] is not wake]

    def start(self) -> "AliasWebhook":
        self._thread = threading.Thread(target=self._server.serve_forever, name="alias-webhook", daemon=True)
        self._thread.start()
        log.info("following alias moves by webhook at %s", self.url)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def handle(self, headers: Mapping[str, str], body: bytes, sender: str = "?") -> int:
        """Verify one delivery and wake the followers of its alias; returns the HTTP status to answer."""
        try:
            verify_signature(self.secret, headers, body, time.time(), self.max_age_s)
            event = json.loads(body)
            if event["entity"] != "model_version_alias":  # another event this webhook was also given: not ours
                return 200
            data = event["data"]
            name, alias = str(data["name"]), str(data["alias"])
        except Refused as exc:
            return self._refuse(exc, sender, 401)
        except (ValueError, KeyError, TypeError) as exc:  # signed with our secret, yet not an event we know
            return self._refuse(Refused("malformed", f"{type(exc).__name__}: {str(exc)[:100]}"), sender, 400)
        with self._lock:
            woken = [w for family, followed, w in self._followers if followed == alias and
                     name.startswith(family + ".")]
        for wake in woken:
            wake.set()
        if woken:
            self.moves += 1
            self._moves.inc()
            log.info("webhook: %s@%s %s (v%s): pulling now", name, alias, event.get("action"), data.get("version", "-"))
        return 200

    def _refuse(self, exc: Refused, sender: str, status: int) -> int:
        with self._lock:
            self.refused[exc.reason] += 1
        self._refused.labels(reason=exc.reason).inc()
        log.warning("webhook delivery from %s refused (%s)", sender, exc)
        return status


def _handler(receiver: AliasWebhook) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            if self.path.split("?")[0] != receiver.path:
                return self._answer(404)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self._answer(413)
            self._answer(receiver.handle(self.headers, self.rfile.read(length), self.client_address[0]))

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("webhook %s: " + fmt, self.client_address[0], *args)

    return Handler


def register_webhook(tracking_uri: str, url: str, secret: str, name: str) -> str:
    """Create the MLflow webhook that posts alias events to ``url`` signed with ``secret``, or update the one named
    ``name`` (a host's receiver moved); returns its id. The tracking server must allow the URL: by default MLflow
    posts only to ``https`` on public addresses (``MLFLOW_WEBHOOK_ALLOWED_SCHEMES``,
    ``MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS``; docs/registry.md)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    page_token = None
    while True:
        page = client.list_webhooks(max_results=100, page_token=page_token)
        for hook in page:
            if hook.name == name:
                client.update_webhook(hook.webhook_id, url=url, events=list(ALIAS_EVENTS), secret=secret,
                                      status="ACTIVE")
                return hook.webhook_id
        if not page.token:
            break
        page_token = page.token
    return client.create_webhook(name=name, url=url, events=list(ALIAS_EVENTS), secret=secret,
                                 description="serving hosts follow alias moves (model_registry.webhook)").webhook_id

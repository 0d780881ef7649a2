"""The alias-webhook receiver against MLflow's own signing code: what MLflow signs is accepted, anything else is
refused and counted, and only a verified move of a followed alias wakes its follower."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from model_registry.webhook import AliasWebhook, Refused, read_secret, verify_signature

SECRET = "s3cret-s3cret-s3cret"


def _signed(payload: dict, secret: str = SECRET, stamp: int | None = None) -> tuple[dict, bytes]:
    """Headers and body exactly as MLflow's delivery builds them (``mlflow.webhooks.delivery``)."""
    from mlflow.webhooks.delivery import _generate_hmac_signature

    body = json.dumps(payload)
    stamp = str(int(time.time()) if stamp is None else stamp)
    headers = {"X-MLflow-Delivery-Id": "d-1", "X-MLflow-Timestamp": stamp,
               "X-MLflow-Signature": _generate_hmac_signature(secret, "d-1", stamp, body)}
    return headers, body.encode()


def _move(name: str = "fraud_risk.cpu", alias: str = "champion", version: str = "3") -> dict:
    return {"entity": "model_version_alias", "action": "created", "timestamp": "2026-11-22T08:00:00+00:00",
            "data": {"name": name, "alias": alias, "version": version}}


def test_header_names_are_mlflows():
    from mlflow.webhooks import constants

    from model_registry import webhook

    assert (webhook.SIGNATURE, webhook.TIMESTAMP, webhook.DELIVERY_ID) == (
        constants.WEBHOOK_SIGNATURE_HEADER, constants.WEBHOOK_TIMESTAMP_HEADER, constants.WEBHOOK_DELIVERY_ID_HEADER)


def test_mlflows_signature_is_accepted_and_every_forgery_refused_by_reason():
    headers, body = _signed(_move())
    now = time.time()
    verify_signature(SECRET, headers, body, now, 300)
    cases = {
        "signature": (_signed(_move(), secret="another-secret-another")[0], body),
        "signature ": (headers, body.replace(b'"3"', b'"1"')),  # the version edited after signing
        "unsigned": ({k: v for k, v in headers.items() if k != "X-MLflow-Signature"}, body),
        "stale": _signed(_move(), stamp=int(now) - 301),
        "malformed": ({**headers, "X-MLflow-Signature": "v2," + headers["X-MLflow-Signature"][3:]}, body),
    }
    for reason, (h, b) in cases.items():
        with pytest.raises(Refused) as err:
            verify_signature(SECRET, h, b, now, 300)
        assert err.value.reason == reason.strip(), reason


def test_only_a_verified_move_of_a_followed_alias_wakes_its_follower():
    prom = CollectorRegistry()
    hook = AliasWebhook(SECRET, "127.0.0.1", 0, metrics_registry=prom)
    champion, other = threading.Event(), threading.Event()
    hook.follow("fraud_risk", "champion", champion)
    hook.follow("market_alert", "champion", other)
    assert hook.handle(*_signed(_move(alias="challenger"))) == 200 and not champion.is_set()
    assert hook.handle(*_signed({"entity": "model_version", "action": "created", "data": {}})) == 200
    assert hook.handle(*_signed(_move("fraud_risk.sm_90"))) == 200 and champion.is_set() and not other.is_set()
    champion.clear()
    forged = _signed(_move(), secret="another-secret-another")
    assert hook.handle(*forged) == 401 and not champion.is_set()
    assert hook.handle(*_signed({"entity": "model_version_alias"})) == 400  # signed, but no data
    assert hook.refused == {"signature": 1, "malformed": 1} and hook.moves == 1
    assert prom.get_sample_value("factory_webhook_refused_total", {"reason": "signature"}) == 1
    hook.unfollow(champion)
    hook.handle(*_signed(_move()))
    assert not champion.is_set()


def test_the_receiver_answers_over_http():
    hook = AliasWebhook(SECRET, "127.0.0.1", 0, metrics_registry=CollectorRegistry()).start()
    wake = threading.Event()
    hook.follow("fraud_risk", "champion", wake)

    def post(headers: dict, body: bytes, path: str = "/mlflow-webhook") -> int:
        req = urllib.request.Request(hook.url.replace("/mlflow-webhook", path), data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
        try:
            return urllib.request.urlopen(req, timeout=5).status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        assert post(*_signed(_move(), secret="another-secret-another")) == 401 and not wake.is_set()
        assert post(*_signed(_move()), path="/elsewhere") == 404
        assert post(*_signed(_move())) == 200 and wake.wait(5)
    finally:
        hook.close()


def test_the_secret_file_is_required_and_long_enough(tmp_path):
    from factory_core.errors import BadInput

    with pytest.raises(BadInput, match="registry.webhook_secret_file"):
        read_secret(None)
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(BadInput, match="3 characters; use 16 or more"):
        read_secret(tmp_path / "short")
    with pytest.raises(BadInput, match="cannot read it"):
        read_secret(tmp_path / "absent")
    (tmp_path / "good").write_text(SECRET + "\n")
    assert read_secret(tmp_path / "good") == SECRET


def test_factory_serve_refuses_a_webhook_without_watch_or_without_a_port(factory_home, capsys):
    from model_registry.cli import main

    assert main(["pull", "fraud_risk", "--dest", "x", "--webhook", "0.0.0.0:8491"]) == 2
    assert "--webhook follows alias moves, so it needs --watch" in capsys.readouterr().err
    assert main(["pull", "fraud_risk", "--dest", "x", "--watch", "--webhook", "0.0.0.0"]) == 2
    assert "--webhook must be HOST:PORT" in capsys.readouterr().err
    assert main(["pull", "fraud_risk", "--dest", "x", "--watch", "--webhook", ":8491"]) == 2
    assert "registry.webhook_secret_file" in capsys.readouterr().err

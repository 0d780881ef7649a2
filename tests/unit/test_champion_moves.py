"""The champion's move records as registered-model tags: the earlier JSON list first, then one tag per move in key
order; a move seen outside the factory gets the same key from every reader, sorted right after the move before it."""

from __future__ import annotations

import json
import time

import pytest

from model_registry.registry import HISTORY_TAG, MOVE_TAG, RegistryError, _after, _new_move_id, _read_moves


def test_moves_read_in_order_after_the_earlier_list():
    first, second = _new_move_id(), _new_move_id()
    legacy = [{"version": "1", "at": "2026-11-20T08:00:00+00:00", "by": "policy:auto_promote", "why": "night"},
              {"version": "2", "at": "2026-11-21T08:00:00+00:00", "by": "outside the factory (MLflow UI or API)",
               "why": "champion alias found on v2, not v1", "not_before": "2026-11-20T08:00:00+00:00"}]
    tags = {HISTORY_TAG: json.dumps(legacy), "champion": "v3 …",
            MOVE_TAG + second: json.dumps({"version": "1", "kind": "rollback", "why": "rollback from v3: slow"}),
            MOVE_TAG + first: json.dumps({"version": "3", "kind": "promote", "why": "better"})}
    moves = _read_moves("fraud_risk.cpu", tags)
    assert [(m["version"], m["kind"], m["id"]) for m in moves] == [
        ("1", "promote", ""), ("2", "outside", ""), ("3", "promote", first), ("1", "rollback", second)]


def test_an_outside_move_sorts_right_after_the_move_before_it_and_is_the_same_for_every_reader():
    last = {"id": _new_move_id(), "version": "3", "at": "2026-11-22T08:00:00+00:00"}
    key = _after(last, "outside-v1")
    time.sleep(0.001)  # a later move of the factory's
    assert key == _after(dict(last), "outside-v1") and last["id"] < key < _new_move_id()
    assert _after(None, "outside-v1") < _after({"id": "", "at": "2026-11-21T08:00:00+00:00"}, "outside-v1") < key


def test_a_move_record_that_is_not_json_is_named():
    with pytest.raises(RegistryError, match=r"fraud_risk.cpu: tag 'champion.move.x' is not the JSON"):
        _read_moves("fraud_risk.cpu", {MOVE_TAG + "x": "{oops"})

"""The MLflow model registry: one registered model per family × target, versions tagged, aliases for roles.

``<family>.<target>`` (e.g. ``market_alert.sm_90``) holds one version per gated engine.
Aliases carry the roles (stages are deprecated): ``challenger`` goes on every new
version that passed the gates; ``champion`` is set by policy or by a person (UI or
``factory promote``), and every move of it is recorded on the registered model, one tag per move (who or
what, why, when, the evidence and the engine it rests on), a move made outside the factory included. Registration is idempotent: a retried task finds its version by the manifest's
sha256 instead of creating a second one, and the alias is set only after the version
exists, so an MLflow outage never leaves an alias pointing at nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any, Iterator

from factory_core.contracts import Manifest
from factory_core.errors import FactoryError, ServiceUnreachable

CHALLENGER, CHAMPION = "challenger", "champion"
EVIDENCE_TAG = "evidence_page"
"""Version tag: the evidence page the version rests on, ``runs:/<run id>/evidence/<target>.html``."""


class RegistryError(FactoryError, RuntimeError):
    """A registry lookup found nothing or the registry refused; the message names the model and alias."""


class NoSuchAlias(RegistryError):
    """The registry answered, and no version carries the alias (or the model does not exist yet).

    The only answer that means "there is no champion". Anything else (a refused connection, a
    timeout, a 5xx) is :class:`RegistryUnavailable` and must never be read as "no champion".
    """


class RegistryUnavailable(RegistryError, ServiceUnreachable):
    """The registry could not answer: the message names the endpoint (never its credentials) and the cause. An
    unreachable service: retried, as the same outage is at preflight."""


def _answered_no_alias(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    text = str(exc)
    if code == "RESOURCE_DOES_NOT_EXIST":
        return True
    return code == "INVALID_PARAMETER_VALUE" and "alias" in text and "not found" in text


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else ""


MOVE_TAG = "champion.move."
"""Registered-model tags, one per alias move: ``champion.move.<stamp>`` → the move as JSON (:func:`_move_record`).
One tag per move keeps every move (a tag value holds 5,000 characters in MLflow's SQL store, so one JSON list of
them could not) and never rewrites an earlier one."""
HISTORY_TAG = "champion.history"
"""The earlier record, one JSON list ``[{version, at, by, why[, not_before]}]``: still read (its moves come first),
never written."""
OUTSIDE = "outside the factory (MLflow UI or API)"
def evidence_page(target: str) -> str:
    """A version's evidence page, an artifact of its source run (the family's night run) where the run has it:
    ``evidence/<target>.html`` (:func:`model_registry.publish.log_evidence` logs it)."""
    return f"evidence/{target}.html"

GATE_REPORT = "gates/report.json"
"""The gates' record of the night, in every source run: the evidence when the run has no page."""
_ENGINE_TAGS = ("factory_version", "precision", "backend", "backend_version", "engine_sha256", "manifest_sha256",
                "engine_identity")
_STAMP = "%Y%m%dT%H%M%S%fZ"


def _new_move_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime(_STAMP) + "-" + uuid.uuid4().hex[:6]


def _after(last: dict[str, Any] | None, what: str) -> str:
    """The key of a move seen after ``last``: one microsecond past it (so it sorts right after it), then ``what``.
    The same for every reader that sees the same move."""
    if last is None:
        stamp = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    elif last.get("id"):
        stamp = dt.datetime.strptime(last["id"][:22], _STAMP).replace(tzinfo=dt.timezone.utc)
    else:  # a record of the earlier list: dated to the second
        stamp = dt.datetime.fromisoformat(last["at"])
    return (stamp + dt.timedelta(microseconds=1)).strftime(_STAMP) + "-" + what


def _move_record(mv: Any, by: str, why: str, kind: str, previous: str, **extra: str) -> dict[str, Any]:
    """One move of ``champion`` onto model version ``mv``: its engine identity as the version's tags say now."""
    tags = mv.tags or {}
    return {"version": str(mv.version), "from": previous, "at": _now(), "by": by, "kind": kind, "why": why[:2000],
            "run_id": mv.run_id or tags.get("source_run") or "",
            "engine": {k: tags[k] for k in _ENGINE_TAGS if tags.get(k)}, **extra}


def _kind_of(entry: dict[str, Any]) -> str:
    if entry.get("by", "").startswith("outside the factory"):
        return "outside" if entry.get("version") else "removed"
    return "rollback" if entry.get("why", "").startswith("rollback from") else "promote"


def _read_moves(name: str, tags: dict[str, str]) -> list[dict[str, Any]]:
    """The moves recorded on a registered model's tags, oldest first: the earlier list's, then one per tag."""
    entries: list[dict[str, Any]] = []
    for key in [HISTORY_TAG] + sorted(k for k in tags if k.startswith(MOVE_TAG)):
        if key not in tags:
            continue
        try:
            value = json.loads(tags[key])
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{name}: tag {key!r} is not the JSON the factory writes ({exc}); restore it, or "
                                f"delete that tag to drop the move from the history") from None
        if key == HISTORY_TAG:
            entries += [{"id": "", "from": "", "kind": _kind_of(e), "run_id": "", "engine": {}, **e} for e in value]
        else:
            entries.append({**value, "id": key[len(MOVE_TAG):]})
    return entries


def model_name(family: str, target: str) -> str:
    return f"{family}.{target}"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def ensure_local_backend(uri: str) -> None:
    """An embedded ``sqlite:///…`` tracking URI needs its directory; servers need nothing."""
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def _made_by_another_is_fine() -> Iterator[None]:
    """A create refused as ``RESOURCE_ALREADY_EXISTS`` means another task made it since we looked (the fleet's
    publishes run at once on a fresh registry): what we wanted exists."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def use_experiment(cfg: Any, name: str) -> None:
    """Point MLflow at ``cfg.tracking_uri`` and experiment ``name``, creating it on first use.

    With the embedded SQLite backend the experiment's artifacts go under
    ``<home>/mlflow/artifacts`` (not ``./mlruns`` of whatever directory a task runs in); a
    tracking server keeps its own artifact root, which every host can reach.
    """
    import mlflow

    ensure_local_backend(cfg.tracking_uri)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    if mlflow.get_experiment_by_name(name) is None:
        local = cfg.tracking_uri.startswith("sqlite:")
        with _made_by_another_is_fine():
            mlflow.create_experiment(name, artifact_location=(cfg.home / "mlflow" / "artifacts").as_uri() if local
                                     else None)
    mlflow.set_experiment(name)


class Registry:
    def __init__(self, tracking_uri: str):
        from mlflow import MlflowClient

        ensure_local_backend(tracking_uri)
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def _ensure_model(self, name: str, family: str, target: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            with _made_by_another_is_fine():
                self.client.create_registered_model(
                    name, tags={"family": family, "target": target},
                    description=f"{family} engines for target {target}, built and gated by the model factory. "
                                f"Aliases: '{CHAMPION}' serves, '{CHALLENGER}' is the newest version that passed.")

    def find(self, family: str, target: str, **tags: str) -> list[Any]:
        """Versions of ``<family>.<target>`` whose tags equal ``tags`` (oldest first)."""
        name = model_name(family, target)
        query = " and ".join([f"name='{name}'"] + [f"tag.{k}='{v}'" for k, v in tags.items()])
        return sorted(self.client.search_model_versions(query), key=lambda mv: int(mv.version))

    def register(self, family: str, target: str, source: str, manifest: Manifest, manifest_sha: str, run_id: str | None,
                 extra_tags: dict[str, str], description: str) -> str:
        """Create (or find, on a re-run or a retry) the version for one engine and point ``challenger`` at it.

        A version is found by the engine's content identity (tag ``engine_identity``, which leaves out build
        times and hosts), so rebuilding the same engine never registers a second version.
        """
        from factory_core.contracts import engine_identity

        name = model_name(family, target)
        self._ensure_model(name, family, target)
        identity = engine_identity(manifest)
        same = self.find(family, target, engine_identity=identity)
        mv = same[0] if same else None
        if mv is None:
            tags = {"precision": manifest.precision, "backend": manifest.backend,
                    "backend_version": manifest.backend_version,
                    "compute_capability": manifest.compute_capability or "cpu",
                    "hardware_compatibility": str(manifest.build.get("hardware_compatibility") or "none"),
                    "manifest_sha256": manifest_sha, "engine_sha256": manifest.sha256["engine"] or "",
                    "engine_identity": identity, "factory_version": manifest.version, **extra_tags}
            mv = self.client.create_model_version(name, source=source, run_id=run_id, tags=tags,
                                                  description=description)
        self.client.set_registered_model_alias(name, CHALLENGER, mv.version)
        return str(mv.version)

    def link_evidence(self, family: str, target: str, version: str, description: str, page: str) -> None:
        """Point a version at the evidence page it rests on: its description (with the link the UI follows) and tag
        :data:`EVIDENCE_TAG` (``runs:/<run>/evidence/<target>.html``), which the newest run to register it sets."""
        name = model_name(family, target)
        self.client.update_model_version(name, version, description=description)
        self.client.set_model_version_tag(name, version, EVIDENCE_TAG, page)

    def resolve(self, family: str, target: str, alias: str) -> Any:
        """The model version an alias points at.

        Raises:
            NoSuchAlias: the registry answered that no version has the alias.
            RegistryUnavailable: the registry did not answer (connection, timeout, server error).
        """
        from mlflow.exceptions import MlflowException
        from requests.exceptions import RequestException

        from factory_core.config import redact

        name = model_name(family, target)
        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            detail = getattr(exc, "message", str(exc))
            if _answered_no_alias(exc):
                raise NoSuchAlias(f"{name}: no version has alias '{alias}' ({detail})") from exc
            raise RegistryUnavailable(f"{name}: the registry at {redact(self.uri)} did not answer for alias "
                                      f"'{alias}': {redact(_first_line(detail))}") from exc
        except (OSError, RequestException) as exc:  # connection errors that MLflow lets through
            raise RegistryUnavailable(f"{name}: the registry at {redact(self.uri)} did not answer for alias "
                                      f"'{alias}': {type(exc).__name__}: {redact(_first_line(str(exc)))}") from exc

    def get_model_tag(self, family: str, target: str, key: str) -> str | None:
        """A tag of the registered model ``<family>.<target>`` (None when unset)."""
        return (self.client.get_registered_model(model_name(family, target)).tags or {}).get(key)

    def set_model_tag(self, family: str, target: str, key: str, value: str) -> None:
        self.client.set_registered_model_tag(model_name(family, target), key, value)

    def history(self, family: str, target: str) -> list[dict[str, Any]]:
        """Every move of ``champion``, oldest first, reconciled with the alias as the registry holds it now.

        Every move the factory makes (policy, ``factory promote``, ``factory rollback``) writes one registered-model
        tag ``champion.move.<stamp>`` (:data:`MOVE_TAG`): the version and the one it replaced, when, who or what,
        why, the kind (``promote``, ``rollback``), the source run whose evidence the version rests on, and the
        engine's identity from the version's tags at that moment. A person who moves ``champion`` in the MLflow UI
        (or any other client) leaves no record; when the alias names another version than the last record, the move
        is recorded here as kind ``outside`` (``by: outside the factory``), dated when the factory first saw it
        (``at``; MLflow records no time for an alias move) with ``not_before``, the previous record's time; a
        deleted alias likewise (kind ``removed``). Such a record's key follows from the previous record and the
        version, so two readers that see the same move at once write the same tag. Rollback, the promotion metric,
        the provenance and ``factory champion history`` all read this, so they agree with the alias whoever moved
        it. The nightly's outcome task reads it every night, so a move is seen within a day (a serving host that
        follows the webhook sees it within seconds, but records nothing).
        """
        from mlflow.exceptions import MlflowException

        name = model_name(family, target)
        try:
            tags = self.client.get_registered_model(name).tags or {}
        except MlflowException as exc:
            if _answered_no_alias(exc):  # no such registered model: no history
                return []
            raise
        entries = _read_moves(name, tags)
        try:
            current = self.resolve(family, target, CHAMPION)
        except NoSuchAlias:
            current = None
        last = entries[-1] if entries else None
        last_version = last["version"] if last else ""
        since = {"not_before": last["at"] if last else ""}
        if current is not None and str(current.version) != last_version:
            why = f"champion alias found on v{current.version}" + (f", not v{last_version}" if last_version else "")
            entry = _move_record(current, by=OUTSIDE, why=why, kind="outside", previous=last_version, **since)
            entries.append(self._record(name, _after(last, f"outside-v{current.version}"), entry))
        elif current is None and last_version:  # the alias was deleted outside the factory
            entry = {"version": "", "from": last_version, "at": _now(), "by": OUTSIDE, "kind": "removed",
                     "why": f"champion alias removed (was v{last_version})", "run_id": "", "engine": {}, **since}
            entries.append(self._record(name, _after(last, "removed"), entry))
        return entries

    def _record(self, name: str, move_id: str, entry: dict[str, Any]) -> dict[str, Any]:
        self.client.set_registered_model_tag(name, MOVE_TAG + move_id, json.dumps(entry, separators=(",", ":")))
        if entry["version"]:
            self.client.set_registered_model_tag(name, "champion", f"v{entry['version']} since {entry['at']} by "
                                                                   f"{entry['by']}: {entry['why']}"[:5000])
        return {**entry, "id": move_id}

    def _move_champion(self, family: str, target: str, mv: Any, by: str, why: str, kind: str) -> None:
        name = model_name(family, target)
        entries = self.history(family, target)  # first take in any move made outside the factory
        self.client.set_registered_model_alias(name, CHAMPION, mv.version)
        previous = entries[-1]["version"] if entries else ""
        self._record(name, _new_move_id(), _move_record(mv, by=by, why=why, kind=kind, previous=previous))

    def promote(self, family: str, target: str, version: str, by: str, why: str) -> str:
        """Point ``champion`` at ``version``, recording who and why in the champion's history."""
        mv = self.client.get_model_version(model_name(family, target), version)  # raises naming the version when absent
        self._move_champion(family, target, mv, by, why, "promote")
        return str(version)

    def rollback(self, family: str, target: str, by: str, why: str) -> str:
        """Point ``champion`` back at the version it replaced, by the champion's (reconciled) history."""
        name = model_name(family, target)
        entries = self.history(family, target)
        current = self.resolve(family, target, CHAMPION)
        earlier = [e["version"] for e in entries[:-1] if e["version"] and e["version"] != str(current.version)]
        if not earlier:
            raise RegistryError(f"{name}: champion v{current.version} replaced no earlier champion; nothing to roll "
                                f"back to")
        previous = earlier[-1]
        self._move_champion(family, target, self.client.get_model_version(name, previous), by,
                            f"rollback from v{current.version}: {why}", "rollback")
        return str(previous)

    def evidence(self, run_id: str, target: str) -> dict[str, str]:
        """Where the evidence a version rests on lies: its source run's evidence page (:func:`evidence_page`) where
        the run has one, its gate report (:data:`GATE_REPORT`) always; as ``runs:/`` URIs, and as MLflow UI links
        when the registry is a tracking server. A run the registry no longer has is said so (``missing``)."""
        from mlflow.exceptions import MlflowException

        if not run_id:
            return {}
        out = {"run_id": run_id, "report": f"runs:/{run_id}/{GATE_REPORT}"}
        page = evidence_page(target)
        try:
            experiment = self.client.get_run(run_id).info.experiment_id
            has_page = any(a.path == page for a in self.client.list_artifacts(run_id, "evidence"))
        except MlflowException as exc:
            return out | {"missing": f"run {run_id}: {getattr(exc, 'message', exc)}"[:300]}
        if has_page:
            out["page"] = f"runs:/{run_id}/{page}"
        if self.uri.startswith(("http://", "https://")):
            out["ui"] = (f"{self.uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}/artifacts/"
                         f"{page if has_page else GATE_REPORT}")
        return out

    def promoted_at(self, family: str, target: str) -> dt.datetime | None:
        """When the current champion became champion (None without one): the promotion metric's source."""
        entries = self.history(family, target)
        return dt.datetime.fromisoformat(entries[-1]["at"]) if entries and entries[-1]["version"] else None

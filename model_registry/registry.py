"""The MLflow model registry: one registered model per family × target, versions tagged, aliases for roles.

``<family>.<target>`` (e.g. ``market_alert.sm_90``) holds one version per gated engine.
Aliases carry the roles (stages are deprecated): ``challenger`` goes on every new
version that passed the gates; ``champion`` is set by policy or by a person (UI or
``factory promote``), and every change is recorded on the version as tags (who, why,
when). Registration is idempotent: a retried task finds its version by the manifest's
sha256 instead of creating a second one, and the alias is set only after the version
exists, so an MLflow outage never leaves an alias pointing at nothing.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

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


HISTORY_TAG = "champion.history"
"""Registered-model tag: the champion's history as JSON, ``[{version, at, by, why[, not_before]}]``."""
HISTORY_KEEP = 20


def model_name(family: str, target: str) -> str:
    return f"{family}.{target}"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def ensure_local_backend(uri: str) -> None:
    """An embedded ``sqlite:///…`` tracking URI needs its directory; servers need nothing."""
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)


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
        mlflow.create_experiment(name, artifact_location=(cfg.home / "mlflow" / "artifacts").as_uri() if local else None)
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

    def history(self, family: str, target: str) -> list[dict[str, str]]:
        """The champion's history, oldest first, reconciled with the alias as the registry holds it now.

        Every promotion the factory makes (policy, ``factory promote``, ``factory rollback``) appends an entry
        to one record, the registered model's tag :data:`HISTORY_TAG`. A person who moves ``champion`` in the
        MLflow UI (or any other client) leaves no entry; when the alias names another version than the last
        entry, the move is appended here, as ``by: outside the factory``, dated when the factory first saw it
        (``at``; MLflow records no time for an alias move) with ``not_before``, the previous entry's time.
        Rollback, the promotion metric and the provenance all read this record, so they agree with the alias
        whoever moved it. The nightly's outcome task reads it every night, so a move is seen within a day.
        """
        from mlflow.exceptions import MlflowException

        try:
            current = str(self.resolve(family, target, CHAMPION).version)
        except NoSuchAlias:
            current = None
        try:
            entries = json.loads(self.get_model_tag(family, target, HISTORY_TAG) or "[]")
        except MlflowException as exc:
            if _answered_no_alias(exc):  # no such registered model: no history
                return []
            raise
        last = entries[-1]["version"] if entries else None
        if current is not None and current != last:
            # MLflow keeps no time for an alias move: the factory dates it when it first sees it, and says since when
            # it may have happened (the previous entry).
            entries.append({"version": current, "at": _now(), "by": "outside the factory (MLflow UI or API)",
                            "why": f"champion alias found on v{current}" + (f", not v{last}" if last else ""),
                            "not_before": entries[-1]["at"] if entries else ""})
            self._write_history(family, target, entries)
        elif current is None and last is not None:  # the alias was deleted outside the factory
            entries.append({"version": "", "at": _now(), "by": "outside the factory (MLflow UI or API)",
                            "why": f"champion alias removed (was v{last})", "not_before": entries[-1]["at"]})
            self._write_history(family, target, entries)
        return entries

    def _write_history(self, family: str, target: str, entries: list[dict[str, str]]) -> None:
        kept = entries[-HISTORY_KEEP:]  # a tag value holds 5,000 characters
        self.set_model_tag(family, target, HISTORY_TAG, json.dumps(kept, separators=(",", ":")))
        if kept and kept[-1]["version"]:
            last = kept[-1]
            self.set_model_tag(family, target, "champion", f"v{last['version']} since {last['at']} by {last['by']}: "
                                                           f"{last['why']}"[:5000])

    def _move_champion(self, family: str, target: str, version: str, by: str, why: str) -> None:
        entries = self.history(family, target)  # first take in any move made outside the factory
        self.client.set_registered_model_alias(model_name(family, target), CHAMPION, version)
        entries.append({"version": str(version), "at": _now(), "by": by, "why": why})
        self._write_history(family, target, entries)

    def promote(self, family: str, target: str, version: str, by: str, why: str) -> str:
        """Point ``champion`` at ``version``, recording who and why in the champion's history."""
        self.client.get_model_version(model_name(family, target), version)  # raises naming the version when absent
        self._move_champion(family, target, str(version), by, why)
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
        self._move_champion(family, target, previous, by, f"rollback from v{current.version}: {why}")
        return str(previous)

    def promoted_at(self, family: str, target: str) -> dt.datetime | None:
        """When the current champion became champion (None without one): the promotion metric's source."""
        entries = self.history(family, target)
        return dt.datetime.fromisoformat(entries[-1]["at"]) if entries and entries[-1]["version"] else None

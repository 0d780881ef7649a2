"""The current champion per (family, target): the MLflow ``champion`` alias, fetched from the engine store.

Gates measure the champion beside the candidates; this module resolves the alias and caches the
verified version on the gate's worker under ``$FACTORY_HOME/cache/champions``.
"""

from __future__ import annotations

import logging

from factory_core.config import FactoryConfig
from factory_core.contracts import Champion
from factory_core.fsutil import committed_dir

log = logging.getLogger(__name__)


def read_champion(cfg: FactoryConfig, family: str, target: str) -> Champion:
    """The champion's registry facts and a local, verified copy of its engine directory.

    ``comparable`` stays False with the reason when there is no champion, or when its copy is unusable (the
    gates then measure without it, and say so).

    Raises:
        model_registry.registry.RegistryUnavailable: the registry did not answer. A gate must not read an
            outage as "no champion" (that silently turns the comparison off); the task fails and retries.
    """
    from model_registry.registry import CHAMPION, NoSuchAlias, Registry
    from factory_core.errors import ManifestError
    from model_registry.store import StoreError, open_store

    try:
        mv = Registry(cfg.tracking_uri).resolve(family, target, CHAMPION)
    except NoSuchAlias:  # only the registry's own "no such alias" means there is no champion
        return Champion(family=family, target=target,
                        reason=f"no champion yet: the registry has no 'champion' alias for {family}.{target}")
    tags = mv.tags or {}
    version = tags.get("factory_version", "")
    facts = Champion(family=family, target=target, registry_version=str(mv.version), version=version,
                     precision=tags.get("precision"), date=tags.get("date"))
    local = cfg.home / "cache" / "champions" / family / target / f"{mv.version}-{version}"
    try:
        if not local.is_dir():
            store = open_store(cfg.store_uri, cfg.registry.s3_endpoint_url)
            with committed_dir(local) as tmp:
                store.fetch(family, target, version, tmp)
    except (StoreError, ManifestError) as exc:  # the registry named a champion whose copy is bad: measured without it, said so
        log.warning("%s/%s: champion's engine unusable: %s", family, target, exc)
        return facts.model_copy(update={"reason": f"champion's engine unusable: {exc}"})
    return facts.model_copy(update={"engine_dir": str(local)})

"""The current champion per (family, target): the MLflow ``champion`` alias, fetched from the engine store.

Gates measure the champion beside the candidates; this module resolves the alias
and caches the verified version locally under ``$FACTORY_HOME/cache/champions``.
"""

from __future__ import annotations

import logging
from typing import Any

from .config import FactoryConfig
from .fsutil import committed_dir

log = logging.getLogger(__name__)


def read_champion(cfg: FactoryConfig, family: str, target: str) -> dict[str, Any] | None:
    """The champion's registry facts and a local, verified copy of its engine directory; None when there is none.

    Raises:
        model_registry.registry.RegistryUnavailable: the registry did not answer. A gate must not read an
            outage as "no champion" (that silently turns the comparison off); the task fails and retries.
    """
    from model_registry.registry import CHAMPION, NoSuchAlias, Registry
    from model_registry.store import open_store

    try:
        mv = Registry(cfg.tracking_uri).resolve(family, target, CHAMPION)
    except NoSuchAlias:  # only the registry's own "no such alias" means there is no champion
        return None
    tags = mv.tags or {}
    version = tags.get("factory_version", "")
    local = cfg.home / "cache" / "champions" / family / target / f"{mv.version}-{version}"
    if not local.is_dir():
        store = open_store(cfg.store_uri, cfg.registry.s3_endpoint_url)
        with committed_dir(local) as tmp:
            store.fetch(family, target, version, tmp)
    return {"family": family, "target": target, "registry_version": str(mv.version), "version": version,
            "precision": tags.get("precision"), "date": tags.get("date"), "engine_dir": str(local)}

"""The current champion per (family, target), kept locally under ``$FACTORY_HOME``.

Promotion copies the selected engine directory into the local engine store at
``<engine_store>/<family>/<target>/<version>/`` (immutable: a version is written once)
and points ``champions/<family>/<target>.json`` at it; every change is appended to
``champions/history.jsonl`` with who and why.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

from .config import FactoryConfig
from .fsutil import committed_dir, write_json


def _pointer(cfg: FactoryConfig, family: str, target: str) -> Path:
    return cfg.home / "champions" / family / f"{target}.json"


def read_champion(cfg: FactoryConfig, family: str, target: str) -> dict[str, Any] | None:
    path = _pointer(cfg, family, target)
    if not path.is_file():
        return None
    entry = json.loads(path.read_text())
    return entry if Path(entry["engine_dir"]).is_dir() else None


def promote(cfg: FactoryConfig, family: str, target: str, engine_dir: Path, version: str, precision: str,
            by: str, why: str, facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Make ``engine_dir`` the champion of (family, target); returns the new pointer."""
    stored = cfg.engine_store / family / target / version
    if not stored.is_dir():
        with committed_dir(stored) as tmp:
            shutil.copytree(engine_dir, tmp, dirs_exist_ok=True)
    entry = {"family": family, "target": target, "version": version, "precision": precision,
             "engine_dir": str(stored), "promoted_at": dt.datetime.now(dt.timezone.utc).isoformat(), "by": by,
             "why": why, **(facts or {})}
    write_json(_pointer(cfg, family, target), entry)
    history = cfg.home / "champions" / "history.jsonl"
    with open(history, "a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
    return entry

"""Serving-host pull: alias → version → download → verify → atomic install, previous versions kept.

Layout under ``--dest``::

    <family>/<target>/versions/<registry version>-<factory version>/   one directory per installed version
    <family>/<target>/current -> versions/…                          switched atomically (symlink rename)

The manifest is checked first: its bytes as fetched must hash to the registry version's
``manifest_sha256`` tag (recorded at registration), else :class:`~model_registry.store.ManifestMismatch`
and nothing else is downloaded. A download goes to a temporary directory, is verified against
that manifest (sha256, target, backend version), fsynced, then renamed into ``versions/``; only
then does ``current`` move. A corrupted or truncated object fails the pull and leaves the
installed version as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from factory_core.config import FactoryConfig
from factory_core.contracts import Manifest
from factory_core.fsutil import pid_alive

from .registry import Registry
from .store import MANIFEST, ManifestMismatch, StoreError, check_manifest_bytes, check_name, open_store

log = logging.getLogger(__name__)
KEEP = 3


@dataclass(frozen=True)
class Installed:
    family: str
    target: str
    alias: str
    registry_version: str
    version: str
    path: Path
    changed: bool


def local_target(choice: str) -> str:
    """``auto`` → this host's ``sm_XY`` from NVML, ``cpu`` when there is no GPU; anything else as given."""
    if choice != "auto":
        return check_name(choice, "target")
    from factory_core.availability import first_gpu

    gpu = first_gpu()
    return gpu.target_name if gpu else "cpu"


@dataclass(frozen=True)
class Choice:
    target: str
    step: str
    """``exact``, ``compatible`` (a hardware-compatible engine of another architecture) or ``cpu``."""
    reason: str


def _cc(target: str) -> tuple[int, int] | None:
    from factory_core.config import COMPUTE_CAPABILITIES

    if target not in COMPUTE_CAPABILITIES:
        return None
    digits = target[3:]
    return int(digits[:-1]), int(digits[-1])


def choose_engine(registry: Registry, family: str, host: str, alias: str, gpu_targets: list[str]) -> Choice:
    """The fallback chain of a host: its exact architecture; then an engine of another architecture built
    ``ampere_plus`` (TensorRT hardware compatibility: runs on any sm_80+ GPU) when this host is Ampere or newer;
    then the CPU engine. Each step that finds no ``alias`` says why in the returned reason."""
    from .registry import NoSuchAlias

    tried = []
    if host != "cpu":
        try:
            registry.resolve(family, host, alias)
            return Choice(host, "exact", f"{family}.{host}@{alias} exists")
        except NoSuchAlias:
            tried.append(f"no {family}.{host}@{alias}")
        cc = _cc(host)
        for other in gpu_targets:
            occ = _cc(other)
            if other == host or cc is None or occ is None or cc < (8, 0) or occ < (8, 0):
                continue
            try:
                mv = registry.resolve(family, other, alias)
            except NoSuchAlias:
                continue
            if (mv.tags or {}).get("hardware_compatibility") == "ampere_plus":
                return Choice(other, "compatible", "; ".join(tried + [f"{family}.{other}@{alias} is built "
                                                                      f"ampere_plus, which runs on {host}"]))
            tried.append(f"{family}.{other}@{alias} is not hardware-compatible")
    return Choice("cpu", "cpu", "; ".join(tried) or "no GPU on this host")


def check_compatible(manifest: Manifest, target: str) -> None:
    """The engine must be for this target, and loadable by this host's backend version."""
    if manifest.target != target:
        raise StoreError(f"engine is for target {manifest.target}, this host is {target}")
    from factory_core.availability import onnxruntime_version, tensorrt_version

    want = manifest.backend_version
    probe = tensorrt_version() if manifest.backend == "tensorrt" else onnxruntime_version()
    if not probe:
        raise StoreError(f"{manifest.backend} {want} engine, but {probe.reason}")
    have = str(probe.value)
    mm = lambda v: tuple(int(p) for p in v.split(".")[:2])  # noqa: E731
    if manifest.backend == "tensorrt" and mm(have) != mm(want):
        raise StoreError(f"TensorRT engine built with {want}; this host has {have} (plans are not portable across "
                         f"TensorRT versions)")
    if manifest.backend == "onnxruntime" and mm(have) < mm(want):
        raise StoreError(f"engine optimized by onnxruntime {want}; this host has the older {have}")


def check_registered(manifest: Manifest, mv) -> None:
    """The store's engine must be the one the registry version names (content identity and engine sha256)."""
    from factory_core.contracts import engine_identity

    tags = mv.tags or {}
    want_id, want_sha = tags.get("engine_identity"), tags.get("engine_sha256")
    got_id, got_sha = engine_identity(manifest), manifest.sha256["engine"]
    if (want_id and want_id != got_id) or (want_sha and want_sha != got_sha):
        raise StoreError(f"{mv.name} v{mv.version} names engine {want_sha or '?'} (identity {want_id or '?'}), but the "
                         f"store's {tags.get('factory_version')} holds engine {got_sha} (identity {got_id}): refusing "
                         f"a registry/store mismatch")


def registered_manifest_sha(mv) -> str:
    """The ``manifest_sha256`` the registry recorded for ``mv``; a version without it cannot be verified and is
    refused (:class:`ManifestMismatch`), never installed unchecked."""
    want = (mv.tags or {}).get("manifest_sha256")
    if not want:
        raise ManifestMismatch(
            f"refusing {mv.name} v{mv.version}: it has no manifest_sha256 tag, so its manifest cannot be checked "
            f"against what was registered (registered outside the factory, or the tag was removed); nothing "
            f"installed. After checking the store's {MANIFEST} by hand, set the tag to its sha256: "
            f"MlflowClient().set_model_version_tag({mv.name!r}, {str(mv.version)!r}, 'manifest_sha256', SHA256)")
    return want


def _refused_manifest(mv, exc: ManifestMismatch) -> ManifestMismatch:
    engine = (mv.tags or {}).get("engine_sha256") or "?"
    return ManifestMismatch(f"refusing {mv.name} v{mv.version} (registered with engine {engine}): {exc}; nothing "
                            f"installed")


def _clean_abandoned(versions: Path) -> None:
    """Remove temporary download folders of pulls that died (their process is gone), e.g. after ``kill -9``."""
    if not versions.is_dir():
        return
    for d in versions.glob(".tmp-*"):
        pid = d.name.split("-")[1] if d.name.count("-") >= 2 else ""
        if not (pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid))):
            shutil.rmtree(d, ignore_errors=True)
            log.info("removed %s left by an interrupted pull", d)


def _fsync_tree(folder: Path) -> None:
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pull(cfg: FactoryConfig, family: str, target: str = "auto", alias: str = "champion",
         dest: Path = Path("engines"), metrics=None, before_switch=None, refused: set | None = None) -> Installed:
    """Install ``alias``'s engine; ``target="auto"`` walks the fallback chain (:func:`choose_engine`).

    ``before_switch(folder)`` runs on the verified version before ``current`` moves (the preflight canary, or a
    serving process's swap); if it raises, ``current`` stays where it was and the error propagates.
    """
    registry = Registry(cfg.tracking_uri)
    if target == "auto":
        gpus = [t.name for t in cfg.declared_targets() if t.compute_capability is not None]
        choice = choose_engine(registry, family, local_target("auto"), alias, gpus)
        log.info("engine for %s on this host: %s (%s: %s)", family, choice.target, choice.step, choice.reason)
        if metrics is not None:
            metrics.engine_choice.labels(**metrics.labels, chosen=choice.target, step=choice.step).set(1)
        target = choice.target
    target = local_target(target)
    mv = registry.resolve(family, target, alias)
    version = (mv.tags or {}).get("factory_version", "")
    base = Path(dest) / check_name(family, "family") / target
    name = f"{mv.version}-{check_name(version, 'version')}"
    final, current = base / "versions" / name, base / "current"
    if final.is_dir() and current.is_symlink() and os.readlink(current) == f"versions/{name}":
        return Installed(family, target, alias, str(mv.version), version, final, changed=False)
    want = registered_manifest_sha(mv)
    (base / "versions").mkdir(parents=True, exist_ok=True)
    _clean_abandoned(base / "versions")
    if final.is_dir():  # kept from an earlier install (a rollback): its manifest must still be the registered one
        try:
            installed = final / MANIFEST
            check_manifest_bytes(installed.read_bytes() if installed.is_file() else b"", want, f"installed {final}")
        except ManifestMismatch as exc:
            raise _refused_manifest(mv, exc) from None
    else:
        tmp = base / "versions" / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            store = open_store(cfg.store_uri, cfg.registry.s3_endpoint_url)
            try:
                manifest = store.fetch(family, target, version, tmp, manifest_sha256=want)
            except ManifestMismatch as exc:
                raise _refused_manifest(mv, exc) from None
            check_registered(manifest, mv)
            check_compatible(manifest, target)
            _fsync_tree(tmp)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if before_switch is not None:
        if refused is not None and name in refused:  # refused once: not retried until the alias moves
            return Installed(family, target, alias, str(mv.version), version, final, changed=False)
        try:
            before_switch(final)
        except Exception:
            if refused is not None:
                refused.add(name)
            raise
    link = base / f".current-{uuid.uuid4().hex[:8]}"
    os.symlink(f"versions/{name}", link)
    os.replace(link, current)  # atomic switch; the previous version stays for rollback
    _prune(base / "versions", keep={name})
    log.info("installed %s/%s %s v%s (%s) at %s", family, target, alias, mv.version, version, final)
    return Installed(family, target, alias, str(mv.version), version, final, changed=True)


def _prune(versions: Path, keep: set[str]) -> None:
    dirs = sorted((d for d in versions.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: d.stat().st_mtime, reverse=True)
    for d in dirs[KEEP:]:
        if d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)


def canary_against_current(base: Path, timeout_s: float = 60.0):
    """A ``before_switch`` for a pull process: the preflight canary against the installed ``current`` version."""
    from .canary import preflight, read_manifest

    def check(folder: Path) -> None:
        current = base / "current"
        live = read_manifest(current) if current.exists() else None
        preflight(folder, live, timeout_s)

    return check


def watch(cfg: FactoryConfig, family: str, target: str, alias: str, dest: Path, interval_s: float,
          on_change=None, iterations: int | None = None, before_switch=None, canary: bool = True,
          stop=None, wake=None) -> None:
    """Poll the alias every ``interval_s``; verify, canary (or ``before_switch``, e.g. a serving process's
    ``EngineRunner.swap``), install, and call ``on_change(installed)`` when it moves. Rollback is the same path:
    the alias moves back, the previous version (kept installed) is checked and switched to. A version refused
    once is not retried until the alias moves again.

    ``wake`` (a ``threading.Event``; :class:`model_registry.webhook.AliasWebhook` sets it on a verified alias move)
    cuts the wait short: the next pull starts at once, on the same path. It is cleared before the pull, so a move
    announced while a pull runs is pulled again right after.
    """
    from .canary import SwapRefused

    n, refused = 0, set()
    base = Path(dest) / check_name(family, "family")
    while (iterations is None or n < iterations) and not (stop is not None and stop.is_set()):
        try:
            hook = before_switch or (canary_against_current(base / local_target(target)) if canary else None)
            inst = pull(cfg, family, target, alias, dest, before_switch=hook, refused=refused)
            if inst.changed and on_change:
                on_change(inst)
        except SwapRefused as exc:
            log.error("%s/%s@%s refused, keeping the installed version: %s", family, target, alias, exc)
        except Exception as exc:  # a bad version or an outage: keep serving what is installed
            log.error("pull %s/%s@%s failed, keeping the installed version: %s", family, target, alias, exc)
        n += 1
        if iterations is None or n < iterations:
            if wake is not None:
                wake.wait(interval_s)
                wake.clear()
            elif stop is not None:
                stop.wait(interval_s)
            else:
                time.sleep(interval_s)


class _Stop(threading.Event):
    """A follower's stop event: setting it also wakes the follower's wait, and leaves the webhook."""

    def __init__(self, wake: threading.Event, webhook=None):
        super().__init__()
        self._wake, self._webhook = wake, webhook

    def set(self) -> None:
        super().set()
        if self._webhook is not None:
            self._webhook.unfollow(self._wake)
        self._wake.set()


def follow(runner, cfg: FactoryConfig, family: str, target: str, alias: str, dest: Path, interval_s: float,
           webhook=None) -> threading.Event:
    """Keep a serving process's ``EngineRunner`` on ``alias``: a daemon thread that watches the registry and, on a
    move, swaps the runner (canary included) before ``current`` moves. With ``webhook`` (an
    :class:`~model_registry.webhook.AliasWebhook`) a verified alias event starts that pull at once; the poll every
    ``interval_s`` stays, for a delivery that never comes. Returns the thread's stop event."""
    wake = threading.Event()
    stop = _Stop(wake, webhook)
    if webhook is not None:
        webhook.follow(family, alias, wake)
    threading.Thread(target=watch, name=f"follow-{family}", daemon=True,
                     kwargs={"cfg": cfg, "family": family, "target": target, "alias": alias, "dest": dest,
                             "interval_s": interval_s, "before_switch": runner.swap, "stop": stop,
                             "wake": wake}).start()
    return stop

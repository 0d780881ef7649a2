"""Publishing one family's night: an MLflow run with its artifacts, and each target's selected engine pushed to
the engine store and registered (alias ``challenger``; ``champion`` when the policy promotes).

The stage (:func:`pipelines.stages.publish`) fetches the files from the run root and hands them here as local
paths with the typed gate records; this module speaks only to MLflow and the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from factory_core.config import FactoryConfig, Family
from factory_core.contracts import Champion, PublishResult, Registered, TargetGate, read_manifest
from factory_core.fsutil import sha256_file

from .registry import CHAMPION, NoSuchAlias, Registry, use_experiment
from .store import open_store

log = logging.getLogger(__name__)

EVIDENCE_DIR = "evidence"
"""Artifact folder of the family's night run holding its evidence pages."""
NIGHT_PAGE = "night.html"
"""The family's night: every target, including those where nothing was registered."""


def version_page(target: str) -> str:
    """The page of the version registered for ``target`` (one per target and night)."""
    return f"{target}.html"


Evidence = Callable[[str | None, list[Registered]], str]
"""Renders an evidence page: for the night (target None) or one target, given what publish registered."""


@dataclass(frozen=True)
class NightFiles:
    """Local copies of what the family's MLflow run keeps."""

    checkpoint: Path
    onnx: Path
    gate_report: Path
    reference: Path
    """The drift monitor's baseline (``reference/reference.parquet`` in the run)."""
    telemetry: Path | None = None


@dataclass(frozen=True)
class Night:
    family: str
    date: str
    data_window: str
    git_commit: str
    test_metrics: dict[str, float]
    extra_metrics: dict[str, float]
    """GPU telemetry summaries (training, each winner's benchmark), already named."""


def close_interrupted_runs(experiment: str, family: str, date: str) -> None:
    """A publish killed mid-run leaves its MLflow run RUNNING for good; the re-run marks it FAILED."""
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment)
    runs = mlflow.search_runs(experiment_ids=[exp.experiment_id], output_format="list",
                              filter_string=f"tags.family = '{family}' and tags.date = '{date}' and "
                                            f"attributes.status = 'RUNNING'")
    client = mlflow.MlflowClient()
    for run in runs:
        client.set_terminated(run.info.run_id, status="FAILED")
        log.warning("%s %s: closed MLflow run %s left RUNNING by an interrupted publish as FAILED", family, date,
                    run.info.run_id)


def auto_promote(registry: Registry, family: str, target: str, version: str, date: str, why: str,
                 compared: Champion | None, held: str | None = None) -> tuple[bool, str]:
    """Move ``champion`` to ``version`` only when tonight's gate compared it with the champion there is now.

    Promotion never skips the comparison: a champion the gate could not measure (its copy missing from the store,
    a bad hash, another input shape, a load error) or one that moved since the gate ran keeps its alias, and the
    note says why. A champion trained for a newer night is not replaced by an older one (two dates at once, a
    re-run of an old date) unless its date lies beyond today plus the allowance: such a date is a mistake, and it
    is not allowed to block promotion, but the note says so. A registry outage raises (the task retries); only the
    registry's "no such alias" means no champion.

    Args:
        compared: the champion as the gate saw it (``comparable`` when it was measured beside the candidates);
            None when the gate had no record of a champion.
        held: the detail of a check that keeps the champion (an undecided comparison under
            ``gates.champion.undecided: keep_champion``): the version stays challenger, and the note says why.
    """
    from factory_core.dates import is_future, latest_night_date

    try:
        current = registry.resolve(family, target, CHAMPION)
    except NoSuchAlias:
        current = None
    notes: list[str] = []
    if current is not None:
        cur = str(current.version)
        if cur == str(version):
            return False, f"v{version} is already the champion"
        if held:
            note = f"champion kept, v{version} is challenger: {held}"
            log.info("%s/%s: %s", family, target, note)
            return False, note
        if compared is None or not compared.registry_version:
            note = (f"kept champion v{cur}: the gate saw no champion, so v{version} was never compared with it "
                    f"(it became champion while tonight's gates ran); promote by hand after comparing")
            log.warning("%s/%s: %s", family, target, note)
            return False, note
        if str(compared.registry_version) != cur:
            note = (f"kept champion v{cur}: tonight's gate compared v{version} with v{compared.registry_version}, "
                    f"and the champion has moved since")
            log.warning("%s/%s: %s", family, target, note)
            return False, note
        if not compared.comparable:
            note = (f"kept champion v{cur}: v{version} was not compared with it tonight "
                    f"({compared.reason or 'the gate did not measure it'}); fix the champion's copy or promote by "
                    f"hand after comparing")
            log.warning("%s/%s: %s", family, target, note)
            return False, note
        champ_date = (current.tags or {}).get("date") or ""
        if champ_date > date:
            if champ_date and is_future(champ_date):
                notes.append(f"champion v{cur}'s date {champ_date} lies beyond {latest_night_date()} (today plus "
                             f"the allowance): a mistaken date, not allowed to block promotion")
                log.warning("%s/%s: %s", family, target, notes[-1])
            else:
                note = (f"not promoted: champion v{cur} was trained for {champ_date}, newer than this night's "
                        f"{date}")
                log.warning("%s/%s: %s", family, target, note)
                return False, note
    registry.promote(family, target, version, by="policy:auto_promote", why=why)
    return True, "; ".join(notes)


def publish_family(cfg: FactoryConfig, night: Night, files: NightFiles,
                   selected: list[tuple[TargetGate, Path]], evidence: Evidence | None = None) -> PublishResult:
    """One MLflow run for the family's night; each ``(gate, local engine folder)`` pushed and registered.

    One version per family x target x date: a re-run that selects another engine for a date already registered
    keeps the registered one (and says so) rather than adding a second.

    ``evidence`` (the page renderer, :mod:`pipelines.evidence_page`): once every target is registered and promoted
    or held, the night's page and each registered version's page are logged under ``evidence/`` of the run, and each
    version's description links to its page (tag ``evidence_page``), so the evidence is the version's own.
    """
    import mlflow

    from factory_core.contracts import engine_identity

    family = night.family
    registry = Registry(cfg.tracking_uri)
    use_experiment(cfg, cfg.registry.experiment)
    close_interrupted_runs(cfg.registry.experiment, family, night.date)
    store = open_store(cfg.store_uri, cfg.registry.s3_endpoint_url)
    versions: list[Registered] = []
    descriptions: dict[str, str] = {}
    tags = {"family": family, "date": night.date, "profile": cfg.profile, "git_commit": night.git_commit,
            "data_window": night.data_window}
    with mlflow.start_run(run_name=f"{family} {night.date}", tags=tags) as run:
        mlflow.log_params({f"family.{k}": v for k, v in cfg.families[Family(family)].model_dump().items()}
                          | {f"train.{k}": v for k, v in cfg.train.model_dump().items()})
        mlflow.log_metrics({f"test_{k}": float(v) for k, v in night.test_metrics.items() if v == v}
                           | night.extra_metrics)
        mlflow.log_artifact(str(files.checkpoint), "pytorch")
        mlflow.log_artifact(str(files.onnx), "onnx")
        mlflow.log_artifact(str(files.gate_report), "gates")
        mlflow.log_artifact(str(files.reference), "reference")  # drift_monitor's baseline
        if files.telemetry is not None:  # GPU telemetry sampled during training (GPU workers only)
            mlflow.log_artifact(str(files.telemetry), "telemetry")
        for gate, engine_dir in selected:
            win = gate.winner
            mlflow.log_metrics({f"{gate.target}.p99_ms": win.p99_ms, f"{gate.target}.auc": win.auc or 0.0})
            manifest = read_manifest(engine_dir, f"{gate.target} engine {engine_dir}")
            identity = engine_identity(manifest)
            earlier = [mv for mv in registry.find(family, gate.target, date=night.date)
                       if (mv.tags or {}).get("engine_identity") != identity]
            if earlier:
                mv = earlier[0]
                note = (f"kept v{mv.version} ({(mv.tags or {}).get('precision')}, engine "
                        f"{(mv.tags or {}).get('engine_identity', '')[:12]}) registered for {night.date} by an "
                        f"earlier run; this run selected {gate.selected} (engine {identity[:12]}): nothing "
                        f"registered. Delete v{mv.version} to replace it.")
                log.warning("%s/%s: %s", family, gate.target, note)
                versions.append(Registered(target=gate.target, registry_version=str(mv.version), store_uri=mv.source,
                                           precision=(mv.tags or {}).get("precision"), note=note))
                continue
            store_version = f"{manifest.version}.{identity[:12]}"  # the content names the store folder
            uri = store.put_version(engine_dir, family, gate.target, store_version)
            manifest = manifest.model_copy(update={"version": store_version})
            description = (f"{family} for {gate.target}: {manifest.precision} {manifest.backend} "
                           f"{manifest.backend_version} engine from the {night.date} nightly (data "
                           f"{night.data_window}). Test AUC {win.auc or 0.0:.4f}; batch-1 p99 {win.p99_ms:.3f} ms on "
                           f"the build host. Selected over: " + "; ".join(
                               f"{c.precision}: {c.outcome}" for c in gate.candidates if c.precision != gate.selected))
            version = registry.register(family, gate.target, uri, manifest,
                                        sha256_file(Path(engine_dir) / "manifest.json"), run.info.run_id,
                                        {"source_run": run.info.run_id, "data_window": night.data_window,
                                         "git_commit": night.git_commit, "date": night.date}, description)
            promoted, note = False, ""
            if cfg.gates.auto_promote:
                promoted, note = auto_promote(registry, family, gate.target, version, night.date,
                                              f"nightly {night.date}: passed every gate; lowest p99 "
                                              f"{win.p99_ms:.3f} ms", gate.champion,
                                              held=next((c.detail for c in win.checks if c.holds_champion), None))
            versions.append(Registered(target=gate.target, registry_version=str(version), store_uri=uri,
                                       precision=gate.selected, promoted=promoted, note=note))
            descriptions[gate.target] = description
            log.info("%s/%s: registered v%s (%s) at %s%s", family, gate.target, version, gate.selected, uri,
                     ", promoted to champion" if promoted else "")
        if evidence is not None:
            log_evidence(registry, family, run, evidence, versions, descriptions)
    return PublishResult(family=family, run_id=run.info.run_id, versions=versions)


def log_evidence(registry: Registry, family: str, run: Any, evidence: Evidence, versions: list[Registered],
                 descriptions: dict[str, str]) -> None:
    """The night's page and each registered version's page into the run; each version's description links its page.

    ``descriptions``: the versions this run registered (or found registered with the same engine), by target; a
    version kept from an earlier run with another engine keeps the description and page of that run.
    """
    import mlflow

    run_id, experiment_id = run.info.run_id, run.info.experiment_id
    mlflow.log_text(evidence(None, versions), f"{EVIDENCE_DIR}/{NIGHT_PAGE}")
    for v in versions:
        if v.target not in descriptions:
            continue
        path = f"{EVIDENCE_DIR}/{version_page(v.target)}"
        mlflow.log_text(evidence(v.target, versions), path)
        link = (f"\n\nEvidence: [{path}](#/experiments/{experiment_id}/runs/{run_id}/artifactPath/{path}), the page "
                f"of run {run_id} (decision, policy, champion comparison, agreement, latency, why the others lost).")
        registry.link_evidence(family, v.target, v.registry_version, descriptions[v.target] + link,
                               f"runs:/{run_id}/{path}")

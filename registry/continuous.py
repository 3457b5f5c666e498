"""Continuous operation of a growing catalog: catalog refresh (a minor version, no retraining) and
retrain (a new major version through the gate), each under one parent MLflow run.

Catalog refresh: the production bundle's item tower embeds new and changed items
(`ml.inference.catalog`), the refreshed bundle is logged (`ml.tracking.catalog`), registered
(same towers fingerprint, new catalog hash: minor), promoted through the gate on the
production version's own evaluation set (old items keep their embeddings bit for bit, so the
two score alike), deployed by the registry's deploy hook (upload, verify, manifest, pointer,
`model_versions`), and, given a DSN, the PostgreSQL embedding tables and views are switched to
it in one transaction (`ml.inference.batch`).

Retrain: the latest data window -> train (nested run) -> evaluate the candidate and the
champion on the candidate's test set (nested run) -> register (new towers: major) -> the gate
(nested run) -> production, deployment and the embedding tables. A failed gate changes
nothing and the result says why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ml.logs import get_logger
from registry.stages import metrics_from_tags

log = get_logger("deployment")


@dataclass
class EmbeddingsPublish:
    """The PostgreSQL embedding tables a version was published to."""

    batch_version: str
    views: dict[str, str]
    vector_type: str
    n_items: int
    publish_s: float


def publish_embeddings(bundle_dir: str | Path, dsn: str, out_dir: str | Path, label: str,
                       table_prefix: str = "towerops", top_k: int = 10) -> EmbeddingsPublish:
    """User and item embeddings and top-k lists of `bundle_dir` to PostgreSQL: versioned tables behind
    the views `<prefix>_{user_embeddings,item_embeddings,recommendations}`, switched in one transaction
    (readers see the old version or the new one, never a mix)."""
    from ml.inference.batch.run import run_batch

    t0 = time.perf_counter()
    result = run_batch(bundle_dir, out_dir, top_k=top_k, dsn=dsn, table_prefix=table_prefix, model_label=label)
    publish = result.postgres
    return EmbeddingsPublish(result.version, dict(publish.views) if publish else {},
                             publish.vector_type if publish else "", result.n_items, time.perf_counter() - t0)


def _batch_dsn(dsn: str | None) -> str | None:
    from ml.secrets import resolve_secret_ref
    from ml.settings import get_settings

    if dsn:
        return resolve_secret_ref(dsn, "--dsn")
    value = get_settings().batch_dsn
    return value.get_secret_value() if value is not None else None


@dataclass
class RefreshResult:
    run_id: str
    version: str
    semver: str
    bump: str
    base_version: str | None
    refresh: Any                      # ml.inference.catalog.CatalogRefresh
    promotion: Any = None             # registry.stages.PromotionResult
    embeddings: EmbeddingsPublish | None = None

    def summary(self) -> dict[str, Any]:
        dep = getattr(self.promotion, "deployment", None)
        return {"run_id": self.run_id, "version": self.version, "semver": self.semver, "bump": self.bump,
                "base_version": self.base_version, **{k: v for k, v in self.refresh.summary().items()
                                                      if k not in ("bundle_dir", "base_dir")},
                "production": getattr(self.promotion, "version", None),
                "deployment": dep.describe() if hasattr(dep, "describe") else None,
                "postgres": None if self.embeddings is None else {
                    "batch_version": self.embeddings.batch_version, "views": self.embeddings.views,
                    "vector_type": self.embeddings.vector_type, "publish_s": round(self.embeddings.publish_s, 3)}}


def catalog_refresh(items: Any, registry: Any = None, model: str | None = None, dsn: str | None = None,
                    batch_out: str | Path = "outputs/batch", table_prefix: str = "towerops", promote: bool = True,
                    trigger: str = "catalog_refresh", actor: str | None = None) -> RefreshResult:
    """Embed the current `items` (folder, DSN, env:VAR, DataFrame) with the production item tower and
    publish a minor version. `model` defaults to `models:/<name>@production`. A refresh whose towers
    differ from production (it would be a major) is refused before anything is registered."""
    import mlflow

    from ml.tracking.catalog import catalog_refresh_run
    from ml.tracking.runs import guard_tracking_loss, start_run
    from registry.service import open_registry

    registry = registry or open_registry()
    holder = registry.alias_version("production")
    if model is None:
        if holder is None:
            raise ValueError(f"{registry.name} has no production version to refresh; promote one first "
                             "(towerops promote --version N) or pass --model")
        model = f"models:/{registry.name}/{holder}"
    pg = _batch_dsn(dsn)
    with guard_tracking_loss(start_run(run_name="catalog_refresh_pipeline",
                                       tags={"towerops.step": "catalog_refresh_pipeline"})) as parent:
        run = catalog_refresh_run(model, items, nested=True)
        base_mv = registry.version(holder) if holder else None
        mv = registry.register(run.run_id, metrics=metrics_from_tags(getattr(base_mv, "tags", None)), trigger=trigger, actor=actor,
                               description=f"catalog refresh of {model}: +{run.refresh.n_added} new, "
                                           f"{run.refresh.n_changed} changed, {run.refresh.n_removed} removed")
        semver, bump = mv.tags.get("semver"), mv.tags.get("semver_bump")
        mlflow.set_tags({"towerops.refresh_run_id": run.run_id, "towerops.registered_version": str(mv.version),
                         "towerops.semver": str(semver)})
        if bump not in ("minor", "patch"):
            raise ValueError(f"catalog refresh of {model} registered as v{mv.version} ({semver}, {bump}): its towers "
                             "differ from production's, so it is not a refresh; nothing was promoted")
        result = RefreshResult(run.run_id, str(mv.version), str(semver), str(bump), holder, run.refresh)
        if promote:
            result.promotion = registry.promote(mv.version, "production", trigger=trigger, actor=actor,
                                                reason=f"catalog refresh ({bump}: same towers, new catalog)")
            if pg:
                result.embeddings = publish_embeddings(run.refresh.bundle_dir, pg, batch_out,
                                                       f"models:/{registry.name}/{mv.version}", table_prefix)
                mlflow.log_metric("catalog.publish_s", result.embeddings.publish_s)
        mlflow.set_tag("towerops.production_version", str(registry.alias_version("production") or ""))
        log.info("catalog refresh: %s v%s (%s, %s) from %s; parent run %s", registry.name, mv.version, semver, bump,
                 model, parent.info.run_id)
    return result


@dataclass
class RetrainResult:
    parent_run_id: str
    train_run_id: str
    evaluate_run_id: str | None
    version: str
    semver: str
    bump: str
    promoted: bool
    production: str | None
    reason: str
    gate: Any = None
    embeddings: EmbeddingsPublish | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"parent_run_id": self.parent_run_id, "train_run_id": self.train_run_id,
                "evaluate_run_id": self.evaluate_run_id, "version": self.version, "semver": self.semver,
                "bump": self.bump, "promoted": self.promoted, "production": self.production, "reason": self.reason,
                "gate": self.gate.to_dict() if self.gate is not None else None, "metrics": self.metrics,
                "postgres": None if self.embeddings is None else {"batch_version": self.embeddings.batch_version,
                                                                  "views": self.embeddings.views}}


def latest_window(dataset: Any, days: float | None) -> Any:
    """The interactions of the last `days` days (by the newest timestamp), with their users and items;
    the whole dataset when `days` is None. Items stay whole: the catalog does not age out."""
    if not days:
        return dataset
    import pandas as pd

    from ml.data.schema import Dataset

    inter = dataset.interactions
    cut = pd.Timestamp(inter["timestamp"].max()) - pd.Timedelta(days=float(days))
    inter = inter[inter["timestamp"] >= cut].reset_index(drop=True)
    if inter.empty:
        raise ValueError(f"the last {days:g} days of the data hold no interactions; widen --window-days")
    users = dataset.users[dataset.users["user_id"].astype(str).isin(set(inter["user_id"].astype(str)))]
    return Dataset(users=users.reset_index(drop=True), items=dataset.items, interactions=inter,
                   sources=dataset.sources)


def retrain(data: Any, registry: Any = None, config: str | None = None, overrides: Mapping[str, Any] | None = None,
            window_days: float | None = None, dsn: str | None = None, batch_out: str | Path = "outputs/batch",
            table_prefix: str = "towerops", trigger: str = "retrain", reason: str | None = None,
            actor: str | None = None, model_dir: str | Path | None = None,
            on_trained: Callable[[Any, Any], Any] | None = None) -> RetrainResult:
    """Train on the latest data window, evaluate against the champion on the same test set, register
    (a new major: new towers) and promote through the gate; each step a nested MLflow run under one
    `retrain` parent. A failed gate leaves production alone; the result (and the parent run's tags)
    say why. The champion is compared with the candidate in the gate step, both on the candidate's
    test set (`ModelRegistry.run_gate`); `on_trained(train_result, window)` runs after training
    (the CLI logs the monitoring reference there)."""
    import mlflow

    from ml.data.loaders import load_dataset
    from ml.data.schema import Dataset
    from ml.platform import load_training_config
    from ml.tracking.evaluation import evaluate_run
    from ml.tracking.runs import guard_tracking_loss, start_run
    from ml.tracking.training import train_run
    from registry.service import open_registry
    from registry.stages import GateFailed

    registry = registry or open_registry()
    cfg = load_training_config(config, overrides)  # a bad config fails before any run
    dataset = data if isinstance(data, Dataset) else load_dataset(
        str(data), rating_scale=cfg.data.rating_scale, like_threshold=cfg.data.like_threshold)
    window = latest_window(dataset, window_days)
    pg = _batch_dsn(dsn)
    champion = registry.alias_version("production")
    with guard_tracking_loss(start_run(run_name="retrain", tags={"towerops.step": "retrain"})) as parent:
        mlflow.log_params({"retrain.trigger": trigger, "retrain.window_days": str(window_days),
                           "retrain.champion": str(champion), "retrain.reason": (reason or "")[:500]})
        trained = train_run(window, config, overrides, model_dir=model_dir, nested=True)
        if on_trained is not None:  # e.g. monitoring's reference, so `monitor run` works once it holds production
            on_trained(trained, window)
        evaluation = evaluate_run(trained.model_dir, window, nested=True, model_uri=trained.model_uri, oracle=False)
        key = {k: v for k, v in (evaluation.metrics if evaluation else {}).items()
               if k in ("ndcg_at_10", "recall_at_10", "recall_at_50", "map_at_10", "auc")}
        mv = registry.register(trained.run_id, metrics=key, trigger=trigger, actor=actor,
                               description=f"retrain ({trigger}){': ' + reason if reason else ''}")
        version, semver, bump = str(mv.version), str(mv.tags.get("semver")), str(mv.tags.get("semver_bump"))
        mlflow.set_tags({"towerops.train_run_id": trained.run_id, "towerops.registered_version": version,
                         "towerops.semver": semver})
        result = RetrainResult(parent.info.run_id, trained.run_id, evaluation.run_id if evaluation else None, version,
                               semver, bump, False, champion, "", metrics=key)
        with start_run(run_name="gate", nested=True, tags={"towerops.step": "gate"}):
            mlflow.log_params({"gate.candidate": version, "gate.champion": str(champion)})
            try:
                promotion = registry.promote(version, "production", trigger=trigger, actor=actor,
                                             reason=reason or f"retrain ({trigger})")
                result.promoted, result.gate = True, promotion.gate
                result.production = promotion.version
                result.reason = promotion.describe()
            except GateFailed as exc:
                result.gate = exc.result.gate
                result.reason = str(exc)
            gate = result.gate
            if gate is not None:
                mlflow.log_dict(gate.to_dict(), "gate.json")
            mlflow.set_tags({"towerops.gate_passed": str(result.promoted).lower(),
                             "towerops.gate_reason": result.reason[:4000]})
        if result.promoted and pg:
            result.embeddings = publish_embeddings(trained.model_dir, pg, batch_out,
                                                   f"models:/{registry.name}/{version}", table_prefix)
        mlflow.set_tags({"towerops.production_version": str(registry.alias_version("production") or ""),
                         "towerops.retrain.promoted": str(result.promoted).lower(),
                         # README: the parent run says whether the gate passed and why (the gate run does too)
                         "towerops.gate_passed": str(result.promoted).lower(),
                         "towerops.gate_reason": result.reason[:4000]})
    if result.promoted:
        log.info("retrain: %s v%s (%s, %s) now holds production (was v%s)", registry.name, version, semver, bump,
                 champion)
    else:
        log.warning("retrain: %s v%s (%s) stays out of production: %s", registry.name, version, semver, result.reason)
    return result

"""The `main` workflow: one parent MLflow run, one nested run per stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ml.logs import get_logger

log = get_logger("training")


def run_main(users: int, items: int, interactions: int, seed: int, config: Path | None,
             overrides: Mapping[str, Any], data_dir: Path, model_dir: Path,
             registry_config: str | None = None) -> dict[str, Any]:
    """Synthetic data -> train -> evaluate -> register -> promote (gate, deploy) -> monitor;
    returns the ids and URIs each stage produced."""
    import mlflow

    from ml.data.loaders import load_folder
    from ml.data.synthetic import generate_synthetic, write_synthetic
    from ml.platform import load_training_config
    from ml.tracking.runs import guard_tracking_loss, start_run
    from ml.tracking.training import train_run

    load_training_config(config, overrides)  # fail on a bad config before anything is written (default: towerops.yaml)
    out: dict[str, Any] = {}
    with guard_tracking_loss(start_run(run_name="main", tags={"towerops.step": "main"})) as parent:
        out["main_run_id"] = parent.info.run_id
        data = generate_synthetic(n_users=users, n_items=items, n_interactions=interactions, seed=seed)
        write_synthetic(data, data_dir)
        mlflow.log_params({"synth.users": users, "synth.items": items, "synth.interactions": interactions,
                           "synth.seed": seed, "data_dir": str(data_dir)})
        dataset = load_folder(data_dir)
        result = train_run(dataset, config, overrides, model_dir=model_dir, nested=True)
        out.update(train_run_id=result.run_id, model_uri=result.model_uri, model_dir=str(result.model_dir))
        mlflow.set_tags({"towerops.train_run_id": result.run_id, "towerops.model_uri": result.model_uri})
        log.info("main: train run %s, model %s", result.run_id, result.model_uri)
        from monitoring.config import load_monitoring_config
        from monitoring.reference import log_reference  # the reference monitoring compares against

        log_reference(result.run_id, result.model_dir, dataset, load_monitoring_config().reference)

        from ml.tracking.evaluation import evaluate_run

        evaluation = evaluate_run(result.model_dir, dataset, nested=True, synthetic=data, model_uri=result.model_uri)
        out.update(evaluate_run_id=evaluation.run_id,
                   evaluation={k: evaluation.metrics[k] for k in ("ndcg_at_10", "popular.ndcg_at_10", "lift_over_popular.ndcg_at_10",
                                                                     "lift_over_best_baseline.ndcg_at_10")
                               if k in evaluation.metrics})
        mlflow.set_tags({"towerops.evaluate_run_id": evaluation.run_id})
        log.info("main: evaluate run %s, %s", evaluation.run_id, out["evaluation"])

        # Register, then promote through the gate; the registry's deploy hook syncs production.
        from registry.service import open_registry
        from registry.stages import GateFailed

        registry = open_registry(registry_config)
        key_metrics = {k: v for k, v in evaluation.metrics.items()
                       if k in ("ndcg_at_10", "recall_at_10", "recall_at_50", "map_at_10", "auc",
                                 "lift_over_popular.ndcg_at_10", "lift_over_best_baseline.ndcg_at_10")}
        version = registry.register(result.run_id, metrics=key_metrics, trigger="main").version
        out.update(registered_version=str(version))
        try:
            promotion = registry.promote(version, "production", trigger="main", data=dataset,
                                         reason="main: gate passed")
            deployment = promotion.deployment  # registry.deploy.DeployResult from the deploy hook, or None
            out.update(production_version=promotion.version,
                       deployment=deployment.describe() if hasattr(deployment, "describe") else str(deployment or ""))
            if hasattr(deployment, "pointer_path"):
                mlflow.set_tags({"towerops.deployment.version": deployment.version,
                                 "towerops.deployment.storage": f"{deployment.backend} {deployment.prefix}"})
            log.info("main: %s", promotion.describe())
        except GateFailed as exc:
            out.update(production_version=registry.alias_version("production"))
            log.warning("main: v%s stays out of production: %s", version, exc)
        mlflow.set_tags({"towerops.registered_version": str(version),
                         "towerops.production_version": str(out.get("production_version") or "")})

        # Monitor last: a fresh window (half the users, all their swipes) against the reference.
        from monitoring.run import monitor_run, sample_window

        monitoring = monitor_run(dataset=sample_window(dataset, frac=0.5, seed=seed + 1),
                                 model_uri_or_run_id=result.run_id, nested=True)
        out.update(monitor_run_id=monitoring.run_id, monitor_alerts=[a.name for a in monitoring.alerts])
        mlflow.set_tags({"towerops.monitor_run_id": monitoring.run_id})
        log.info("main: monitor run %s, alerts %s", monitoring.run_id, out["monitor_alerts"] or "none")
    return out

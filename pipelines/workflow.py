"""The `main` workflow: one parent MLflow run, one nested run per stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ml.logs import get_logger

log = get_logger("training")


def run_main(users: int, items: int, interactions: int, seed: int, config: Path | None,
             overrides: Mapping[str, Any], data_dir: Path, model_dir: Path) -> dict[str, Any]:
    """Synthetic data -> train; returns the ids and URIs each stage produced."""
    import mlflow

    from ml.config import load_config
    from ml.data.loaders import load_folder
    from ml.data.synthetic import generate_synthetic, write_synthetic
    from ml.tracking import start_run, train_run

    load_config(config, overrides)  # fail on a bad config before anything is written
    out: dict[str, Any] = {}
    with start_run(run_name="main", tags={"towerops.step": "main"}) as parent:
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
    return out

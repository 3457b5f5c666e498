"""A batch run tracked in MLflow: parameters, counts and the published version."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass
from ml.inference.batch.run import BatchResult, run_batch


def run_batch_tracked(model_dir: str | Path, out_dir: str | Path, model_uri: str | None = None,
                      **kwargs: Any) -> BatchResult:
    """`run_batch` inside an MLflow run (joins the one `mlflow run` made): params, throughput, manifest."""
    import mlflow

    from ml.tracking.runs import start_run

    with start_run(run_name="batch_infer", tags={"towerops.step": "batch_infer"}):
        result = run_batch(model_dir, out_dir, model_label=model_uri, **kwargs)
        mlflow.log_params({"model": model_uri or str(model_dir), "top_k": result.top_k, "scoring": result.scoring,
                           "chunk_size": kwargs.get("chunk_size", 1024), "out_dir": str(out_dir),
                           "postgres": bool(result.postgres)})
        mlflow.log_metrics({"n_users": result.n_users, "n_items": result.n_items, "scoring_s": result.scoring_s,
                            "total_s": result.total_s, "users_per_min": result.users_per_min})
        mlflow.set_tag("towerops.batch_version", result.version)
        mlflow.log_artifact(str(result.version_dir / "manifest.json"), "batch")
    return result

"""A catalog refresh as an MLflow run: the refreshed bundle logged as a recommender with the tags
the registry numbers it by (same towers fingerprint as its base, a new catalog hash: a minor
version), no retraining.

The run carries over from its base model's run what the rest of the platform reads there: the
data hash and source, the evaluation set (so the gate compares the refresh and production on
the same test set) and the monitoring reference (so `monitor run` works on the new version).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml.logs import get_logger
from ml.tracking.runs import guard_tracking_loss, start_run

log = get_logger("inference")

CARRIED_TAGS = ("towerops.data_hash", "towerops.data_source", "towerops.eval_set_hash")
CARRIED_ARTIFACTS = ("monitoring/reference", "evaluation/test_set")


@dataclass
class CatalogRefreshRun:
    run_id: str
    model_uri: str
    base_model: str
    base_run_id: str | None
    refresh: Any  # ml.inference.catalog.CatalogRefresh


def load_items(source: Any) -> Any:
    """The current items table: a DataFrame, a Dataset, or a data folder / postgresql:// DSN / env:VAR
    of which only the items table is read (validated like any load)."""
    import pandas as pd

    from ml.data.schema import Dataset

    if isinstance(source, pd.DataFrame):
        return source
    if isinstance(source, Dataset):
        return source.items
    from ml.data.loaders import load_items as load_items_table

    return load_items_table(str(source))


def _base_run_id(model: str, bundle_dir: Path) -> str | None:
    """The run that logged the base model (for carried tags and artifacts); None for a bare folder."""
    from mlflow import MlflowClient

    text = str(model)
    if text.startswith("runs:/"):
        return text[len("runs:/"):].split("/", 1)[0]
    if text.startswith("models:/"):
        ref = text[len("models:/"):].strip("/")
        client = MlflowClient()
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias).run_id
        name, version = ref.split("/", 1)
        return client.get_model_version(name, version).run_id
    return None


def catalog_refresh_run(model: str | Path, items: Any, out_dir: str | Path | None = None, nested: bool = False,
                        run_name: str = "catalog_refresh", experiment: str | None = None) -> CatalogRefreshRun:
    """Refresh the catalog of `model` (bundle folder or MLflow model URI) with the current `items`
    and log the new bundle in an MLflow run. Bad items or model fail before any run starts."""
    import mlflow
    from mlflow import MlflowClient

    from ml.bundle.resolve import resolve_model
    from ml.inference.catalog import refresh_catalog
    from ml.secrets import describe_secret, is_secret_ref
    from ml.tracking.training import log_recommender

    items_df = load_items(items)
    base_dir = resolve_model(model)
    base_run = _base_run_id(str(model), base_dir)
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="towerops-catalog-")) / "bundle"
    label = describe_secret(str(items)) if isinstance(items, (str, Path)) else "items"  # a DSN without its password
    refresh = refresh_catalog(base_dir, items_df, out, source=label)
    meta = json.loads((out / "metadata.json").read_text())
    base_tags = MlflowClient().get_run(base_run).data.tags if base_run else {}
    with guard_tracking_loss(start_run(run_name=run_name, experiment=experiment, nested=nested,
                                       tags={"towerops.step": "catalog_refresh"})) as run:
        source = items if isinstance(items, (str, Path)) else "in-memory items"
        mlflow.log_params({"catalog.base_model": str(model)[:500],
                           "catalog.items_source": str(source) if is_secret_ref(str(source))
                           else describe_secret(str(source))[:500],
                           **{f"catalog.{k}": getattr(refresh, k) for k in ("n_items", "n_kept", "n_changed",
                                                                            "n_added", "n_removed")}})
        mlflow.log_metrics({"catalog.items_per_s": float(refresh.items_per_s) if refresh.n_embedded else 0.0,
                            "catalog.embedded_s": refresh.embedded_s})
        tags = {k: v for k, v in base_tags.items() if k in CARRIED_TAGS}
        if base_tags.get("towerops.eval_set"):
            tags["towerops.eval_set"] = base_tags["towerops.eval_set"]
        tags.update({"towerops.embedding_dim": str(meta["embedding_dim"]),
                     "towerops.feature_schema_hash": str(meta["feature_schema_hash"]),
                     "towerops.towers_fingerprint": refresh.towers_fingerprint,
                     "towerops.catalog_hash": refresh.catalog_hash,
                     "towerops.base_run_id": base_run or "", "towerops.base_model": str(model)[:500]})
        mlflow.set_tags(tags)
        if base_run:  # what the gate and monitoring read on the version's run
            for path in CARRIED_ARTIFACTS:
                try:
                    local = mlflow.artifacts.download_artifacts(run_id=base_run, artifact_path=path)
                except Exception as exc:  # noqa: BLE001 - the base run may predate it: say so, go on
                    log.warning("catalog refresh: base run %s has no %s (%s); not carried", base_run, path,
                                str(exc).splitlines()[0][:200])
                    continue
                mlflow.log_artifacts(local, path)
        mlflow.log_dict({**refresh.summary(), "added_ids": refresh.added_ids[:10000]}, "catalog_refresh.json")
        mlflow.log_artifact(str(out / "metadata.json"))
        info = log_recommender(out)
        mlflow.set_tag("towerops.model_uri", info.model_uri)
        run_id = run.info.run_id
    log.info("catalog refresh run %s: %d items (%d added, %d changed), model %s", run_id, refresh.n_items,
             refresh.n_added, refresh.n_changed, info.model_uri)
    return CatalogRefreshRun(run_id, info.model_uri, str(model), base_run, refresh)

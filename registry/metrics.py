"""Gate metrics for a version, computed by the one evaluation protocol on the TEST part of the time
split: the model's metrics, the baselines the gate compares against (same split, same run) and the
embedding-health figures the bundle records."""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.stages import ModelRegistry


class EvaluationMetrics:
    """Gate metrics: every version evaluated on the same data and the same test part, cached per
    (version, data, baselines). Only the candidate runs the baselines.

    The data is, by default, the evaluation set the candidate's training run logged
    (`ml.tracking.datasets`: the tables and the exact split, read through the tracking server),
    so the gate on any host evaluates on what training held out; `data` (a folder, DSN or
    Dataset) replaces it, split with the candidate's shares. Each model ranks the data's items:
    items a model never saw go through its content path (`ml.evaluation.catalog`); when a
    model cannot featurise them, every model is compared on the items all of them know, and
    `last_notes` says so (the gate result carries the notes)."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._cache: dict[tuple[str, str, tuple[str, ...]], dict[str, float]] = {}
        self.last_notes: list[str] = []

    def _recorded_data(self, candidate: str) -> tuple[Any, dict[str, float] | None, str, list[str]]:
        """(dataset or source, shares or None, cache key, notes) of the candidate's logged data."""
        tags = self.registry.version(candidate).tags
        if tags.get("eval_set"):
            from ml.tracking.datasets import load_eval_set

            evalset = load_eval_set(tags["eval_set"])
            if tags.get("eval_set_hash") and tags["eval_set_hash"] != evalset.hash:
                raise ValueError(f"v{candidate}'s evaluation set {tags['eval_set']} has sha256 {evalset.hash[:12]}, not "
                                 f"the {tags['eval_set_hash'][:12]} recorded when it was registered")
            return (evalset.dataset, evalset.shares, f"evalset:{evalset.hash}",
                    [f"evaluated on the {evalset.describe()} of v{candidate}"])
        source = tags.get("data_source", "")
        if not source:
            raise ValueError(f"v{candidate} records no training data source; pass --data for the gate's evaluation")
        from pathlib import Path

        from ml.data.loaders import is_postgres_dsn
        from ml.secrets import is_secret_ref

        if not (is_secret_ref(source) or is_postgres_dsn(source)):
            p = Path(source)
            folder = p.parent if p.suffix in {".csv", ".parquet", ".gz"} else p
            if not (folder.is_absolute() and folder.is_dir()):
                raise ValueError(f"v{candidate} logged no evaluation set and records its training data as {source!r}, "
                                 "which this host cannot read (retrain with this towerops to log the evaluation "
                                 "set); pass --data for the gate's evaluation")
            source = str(folder)
        return source, None, source, [f"evaluated on v{candidate}'s recorded training data {source}"]

    def __call__(self, versions: list[str], data: Any | None) -> dict[str, dict[str, float]]:
        from ml.bundle.load import load_bundle
        from ml.bundle.resolve import resolve_model
        from ml.data.loaders import load_dataset
        from ml.data.schema import Dataset
        from ml.evaluation.protocol import split_shares

        if data is not None:
            source, shares, key = data, None, data if isinstance(data, str) else str(id(data))
            notes = [f"evaluated on the data given ({data if isinstance(data, str) else 'in memory'})"]
        else:
            source, shares, key, notes = self._recorded_data(versions[0])
        dataset = source if isinstance(source, Dataset) else None
        bundles: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="towerops-gate-") as tmp:
            for v in versions:
                bundles[v] = load_bundle(resolve_model(f"models:/{self.registry.name}/{v}", download_dir=f"{tmp}/{v}"))
            candidate = bundles[versions[0]]
            if dataset is None:  # read with the candidate's rating scale (data.* of its config)
                data_cfg = dict(candidate.config.get("data", {}) or {})
                dataset = load_dataset(str(source), rating_scale=data_cfg.get("rating_scale", "auto"),
                                       like_threshold=data_cfg.get("like_threshold"))
            if shares is None:  # every version on the candidate's test part
                shares = split_shares(candidate.config)
            out, more = self._evaluate(versions, bundles, dataset, shares, key)
        self.last_notes = notes + more
        return out

    def _baselines(self, v: str, versions: list[str]) -> tuple[str, ...]:
        return self.registry.config.gate.baselines_needed() if v == versions[0] else ()

    def _evaluate(self, versions: list[str], bundles: dict[str, Any], dataset: Any, shares: dict[str, float],
                  key: str) -> tuple[dict[str, dict[str, float]], list[str]]:
        """Each version on `dataset`'s items (cold ones through its content path), else on the items all know."""
        from ml.evaluation.catalog import align_catalog

        views: dict[str, Any] = {}
        notes: list[str] = []
        failed: dict[str, str] = {}
        for v, bundle in bundles.items():
            try:
                views[v], alignment = align_catalog(bundle, dataset.items)
            except Exception as exc:  # noqa: BLE001 - a model that cannot featurise new items: common items
                failed[v] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                continue
            if alignment.n_cold or alignment.n_dropped:
                notes.append(alignment.describe(f"v{v}"))
        mode = "all"
        if failed:
            common = set(dataset.items["item_id"].astype(str))
            for bundle in bundles.values():
                common &= set(map(str, bundle.item_ids))
            dataset = _restrict(dataset, common)
            views = {v: align_catalog(b, dataset.items)[0] for v, b in bundles.items()}
            mode = f"common:{len(common)}"
            notes = [f"compared on the {len(common)} items every version knows: "
                     + "; ".join(f"v{v} cannot score the others ({why})" for v, why in failed.items())]
        return self._metrics(versions, views, dataset, shares, f"{key}:{mode}"), notes

    def _metrics(self, versions: list[str], views: dict[str, Any], dataset: Any, shares: dict[str, float],
                 key: str) -> dict[str, dict[str, float]]:
        from ml.evaluation.evaluate import evaluate_bundle

        out: dict[str, dict[str, float]] = {}
        for v in versions:
            baselines = self._baselines(v, versions)
            if (v, key, baselines) not in self._cache:
                ev = evaluate_bundle(views[v], dataset, ks=self.registry.config.eval_ks, baselines=baselines,
                                     validation_split=shares.get("validation_split"),
                                     test_split=shares.get("test_split"))
                self._cache[(v, key, baselines)] = {k: float(x) for k, x in ev.metrics.items()}
            out[v] = self._cache[(v, key, baselines)]
        return out


def _restrict(dataset: Any, items: set[str]) -> Any:
    """The dataset without the items outside `items` (and their interactions)."""
    import dataclasses

    keep_items = dataset.items["item_id"].astype(str).isin(items).to_numpy()
    keep_inter = dataset.interactions["item_id"].astype(str).isin(items).to_numpy()
    return dataclasses.replace(dataset, items=dataset.items.loc[keep_items].reset_index(drop=True),
                               interactions=dataset.interactions.loc[keep_inter].reset_index(drop=True))

"""Gate metrics for a version: read from its evaluation run, or computed by the one evaluation protocol."""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.stages import ModelRegistry


class EvaluationMetrics:
    """Gate metrics: each version evaluated on the same data (the candidate's training data by
    default), cached per (version, data)."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._cache: dict[tuple[str, str], dict[str, float]] = {}

    def _data_source(self, candidate: str, data: Any) -> Any:
        if data is not None:
            return data
        source = self.registry.version(candidate).tags.get("data_source", "")
        if not source:
            raise ValueError(f"v{candidate} records no training data source; pass --data for the gate's evaluation")
        from pathlib import Path

        p = Path(source)
        return str(p.parent) if p.suffix in {".csv", ".parquet", ".gz"} else source

    def __call__(self, versions: list[str], data: Any | None) -> dict[str, dict[str, float]]:
        from ml.bundle.resolve import resolve_model
        from ml.data.loaders import load_dataset
        from ml.data.schema import Dataset
        from ml.evaluation.evaluate import evaluate_bundle

        source = self._data_source(versions[0], data)
        key = source if isinstance(source, str) else str(id(source))
        dataset = None
        out: dict[str, dict[str, float]] = {}
        for v in versions:
            if (v, key) not in self._cache:
                if dataset is None:
                    dataset = source if isinstance(source, Dataset) else load_dataset(str(source))
                with tempfile.TemporaryDirectory(prefix="towerops-gate-") as tmp:
                    bundle_dir = resolve_model(f"models:/{self.registry.name}/{v}", download_dir=tmp)
                    ev = evaluate_bundle(bundle_dir, dataset, ks=self.registry.config.eval_ks, baselines=())
                self._cache[(v, key)] = {k: float(x) for k, x in ev.metrics.items()}
            out[v] = self._cache[(v, key)]
        return out

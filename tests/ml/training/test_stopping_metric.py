"""Names of ranking metrics for early stopping: one reading (ml.evaluation.metrics) everywhere, and a
bad one refused before any MLflow run starts."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("metric", ["val_foo_at_10", "val_coverage_at_10"])
def test_an_unknown_ranking_metric_stops_train_run_before_any_mlflow_run(metric: str, tmp_path) -> None:
    """The config's pattern admits val_<anything>_at_<k>; train_run then refuses a name no metric has, naming the
    value and the choices, before an MLflow run exists (nothing half-done to clean up)."""
    import mlflow

    from ml.data.synthetic import generate_synthetic, write_synthetic
    from ml.tracking.training import train_run

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")  # a store of this test's own
    write_synthetic(generate_synthetic(n_users=30, n_items=20, n_interactions=300, seed=0), tmp_path / "data")
    with pytest.raises(ValueError, match=rf"training.early_stopping_metric='{metric}' is not one towerops computes.*"
                                         r"ndcg.*e\.g\. val_ndcg_at_10"):
        train_run(str(tmp_path / "data"), None, {"training.early_stopping_metric": metric}, experiment="refused")
    try:
        assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
    finally:
        mlflow.set_tracking_uri(None)


def test_validation_ranking_metric_names() -> None:
    """One reading of val_<metric>_at_<k> for early stopping, tuning and the per-epoch ranking."""
    from ml.evaluation.metrics import validation_ranking_metric
    from ml.training.tuning import tuning_spec_from_dict

    assert validation_ranking_metric("val_ndcg_at_10") == ("ndcg", 10)
    assert validation_ranking_metric("val_hit_rate_at_5") == ("hit_rate", 5)
    for bad in ("val_foo_at_10", "val_ndcg_at_0", "ndcg_at_10", "val_ndcg_at_", "val_coverage_at_10"):
        assert validation_ranking_metric(bad) is None
    assert tuning_spec_from_dict({"objective": {"metric": "val_mrr_at_20"}}).ranking_k == 20
    with pytest.raises(ValueError, match="objective.metric"):
        tuning_spec_from_dict({"objective": {"metric": "val_foo_at_10"}})

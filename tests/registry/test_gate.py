"""The promotion gate's baseline and health checks: a popularity-level model and a collapsed one are refused.

The popularity-level candidate is measured, not made up: the protocol ranks most-popular as the
"model" next to the baselines on a synthetic test split, so its lift over most-popular is 1.0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.config import ConfigError
from ml.data.split import time_split_per_user
from ml.data.synthetic import generate_synthetic
from ml.evaluation.baselines import baseline_scorers, popularity_scorer
from ml.evaluation.evaluate import flat_metrics, score_systems
from ml.evaluation.protocol import build_split
from registry.gate import GateConfig, check_gate

HEALTHY = {"health_dead_unit_share": 0.04, "health_item_effective_rank": 90.0, "health_user_effective_rank": 70.0,
           "health_item_mean_cosine": 0.12, "health_user_mean_cosine": 0.2}


@pytest.fixture(scope="module")
def measured() -> dict[str, dict[str, float]]:
    """Flat evaluation metrics of two candidates on one synthetic test split: most-popular itself, and
    the generator's true like probability (the oracle), each next to popular / random / ALS / EASE."""
    synth = generate_synthetic(n_users=300, n_items=200, n_interactions=6000, seed=11)
    ds = synth.dataset
    inter = ds.interactions
    ts = time_split_per_user(inter, 0.1, 0.2)
    users = pd.Index(ds.users["user_id"]).get_indexer(inter["user_id"])
    items = pd.Index(ds.items["item_id"]).get_indexer(inter["item_id"])
    split = build_split(users, items, inter["label"].to_numpy(), ts.train | ts.valid, ts.test,
                        ds.users["user_id"].to_numpy(), list(ds.items["item_id"]), "test",
                        {"validation_split": 0.1, "test_split": 0.2})
    base = baseline_scorers(split, ("popular", "random", "als", "ease")).scorers
    truth = synth.like_probability
    out = {}
    for name, model in (("popularity-level", popularity_scorer(split)),
                        ("oracle", lambda rows: truth(split.user_rows[rows]).astype(np.float32))):
        _, summaries = score_systems({"model": model, **base}, split, [10, 50], ["ndcg", "recall"])
        out[name] = {**flat_metrics(summaries, split.counts), **HEALTHY}
    return out


def test_gate_refuses_a_popularity_level_model(measured) -> None:
    m = measured["popularity-level"]
    assert m["lift_over_popular.ndcg_at_10"] == pytest.approx(1.0)
    result = check_gate(m, None, GateConfig())                 # the defaults: >= 1.1x most-popular on NDCG@10
    assert not result.passed
    [failed] = result.failures()
    assert failed.kind == "baseline" and failed.metric == "lift_over_popular.ndcg_at_10"
    assert "is 1.00x most-popular" in failed.message and "needs >= 1.10x" in failed.message
    assert "gate.baselines.popular.ndcg_at_10" in result.summary()


def test_gate_passes_a_model_well_above_popularity(measured) -> None:
    m = measured["oracle"]
    assert m["lift_over_popular.ndcg_at_10"] > 1.1
    assert check_gate(m, None, GateConfig()).passed


def test_relative_threshold_against_als_is_available(measured) -> None:
    m = measured["popularity-level"]
    strict = GateConfig.from_mapping({"absolute": {}, "baselines": {"als": {"ndcg_at_10": 1.0}}})
    result = check_gate(m, None, strict)
    assert [c.metric for c in result.failures()] == ["lift_over_als.ndcg_at_10"]
    assert "implicit ALS" in result.failures()[0].message
    assert check_gate(measured["oracle"], None, strict).passed


def test_gate_refuses_a_collapsed_model() -> None:
    collapsed = {"ndcg_at_10": 0.2, "recall_at_50": 0.3, "popular.ndcg_at_10": 0.1, "lift_over_popular.ndcg_at_10": 2.0,
                 # the collapse of issue 13: 3/4 dead ReLU units, item rank 12 of 768, mean cosine 0.87
                 "health_dead_unit_share": 0.75, "health_item_effective_rank": 12.0, "health_user_effective_rank": 30.0,
                 "health_item_mean_cosine": 0.87, "health_user_mean_cosine": 0.5}
    result = check_gate(collapsed, None, GateConfig(health={"max_dead_unit_share": 0.5, "min_item_effective_rank": 16,
                                                            "max_item_mean_cosine": 0.8}))
    failed = {c.metric: c for c in result.failures()}
    assert set(failed) == {"health_dead_unit_share", "health_item_effective_rank", "health_item_mean_cosine"}
    assert failed["health_dead_unit_share"].message.startswith("health_dead_unit_share=0.75 > allowed 0.5")
    assert "health_item_effective_rank=12 < required 16 (gate.health.min_item_effective_rank)" in \
        failed["health_item_effective_rank"].message
    assert "collapsed" in result.summary()
    # the defaults refuse it too; healthy figures pass
    assert not check_gate(collapsed, None, GateConfig()).passed
    assert check_gate({**collapsed, **HEALTHY}, None, GateConfig()).passed


def test_missing_health_figures_fail_closed_with_the_fix() -> None:
    result = check_gate({"ndcg_at_10": 0.2, "recall_at_50": 0.3, "popular.ndcg_at_10": 0.1,
                         "lift_over_popular.ndcg_at_10": 2.0}, None, GateConfig())
    assert {c.kind for c in result.failures()} == {"health"}
    assert "records no embedding health" in result.failures()[0].message
    assert check_gate({"ndcg_at_10": 0.2, "recall_at_50": 0.3, "popular.ndcg_at_10": 0.1,
                       "lift_over_popular.ndcg_at_10": 2.0}, None, GateConfig(health={})).passed


def test_gate_config_rejects_unknown_baselines_and_limits() -> None:
    with pytest.raises(ConfigError, match="gate.baselines.alss"):
        GateConfig.from_mapping({"baselines": {"alss": {"ndcg_at_10": 1.0}}})
    with pytest.raises(ConfigError, match="gate.health.max_dead_units"):
        GateConfig.from_mapping({"health": {"max_dead_units": 0.5}})
    assert GateConfig().baselines_needed() == ("popular",)

"""Feature pipeline on hand-made tiny tables with hand-computed expectations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ml.config import FeatureConfig
from ml.preprocessing.features import OOV, FeaturePipeline


def _items() -> pd.DataFrame:
    return pd.DataFrame({
        "item_id": ["a", "b", "c"],
        "title": ["red fox", "blue whale", "red whale"],
        "description": ["forest animal", "ocean animal", "ocean red"],
        "tags": [["x", "y"], ["y"], []],
        "genre": ["nature", "nature", "sea"],
        "maker": ["m1", "m2", "m1"],
        "price": [0.0, math.e - 1, math.e ** 2 - 1],   # log1p -> 0, 1, 2
        "duration_s": [np.nan, 10.0, 10.0],             # NaN imputed by the median
        "released_at": pd.to_datetime(["2020-01-01", "2021-01-01", "2022-01-01"]),
    })


def _users() -> pd.DataFrame:
    return pd.DataFrame({"user_id": ["u1", "u2"], "age": [20.0, 40.0], "country": ["de", "fr"]})


@pytest.fixture
def pipeline() -> FeaturePipeline:
    return FeaturePipeline(config=FeatureConfig(text_dim=2, max_tags=10, max_makers=10)).fit(_items(), _users())


def test_item_matrix_hand_computed(pipeline: FeaturePipeline) -> None:
    x = pipeline.item_matrix(_items())
    names = pipeline.item_feature_names()
    assert x.shape == (3, len(names)) == (3, pipeline.item_dim)
    col = {n: i for i, n in enumerate(names)}
    # tags: vocabulary ordered by count then name -> y (2), x (1)
    assert pipeline.tag_vocab == ["y", "x"]
    np.testing.assert_array_equal(x[:, col["tag=y"]], [1, 1, 0])
    np.testing.assert_array_equal(x[:, col["tag=x"]], [1, 0, 0])
    np.testing.assert_array_equal(x[:, col[f"tag={OOV}"]], [0, 0, 0])
    np.testing.assert_array_equal(x[:, col["genre=nature"]], [1, 1, 0])
    np.testing.assert_array_equal(x[:, col["genre=sea"]], [0, 0, 1])
    np.testing.assert_array_equal(x[:, col["maker=m1"]], [1, 0, 1])
    # log price 0, 1, 2 -> mean 1, population std sqrt(2/3)
    np.testing.assert_allclose(x[:, col["log_price"]], np.array([-1, 0, 1]) / math.sqrt(2 / 3), rtol=1e-5)
    # duration: all three equal after imputing the NaN with the median -> std 0 -> scaled to 0
    np.testing.assert_allclose(x[:, col["log_duration"]], [0, 0, 0], atol=1e-6)
    # text embedding rows are unit length
    np.testing.assert_allclose(np.linalg.norm(x[:, :2], axis=1), 1.0, rtol=1e-5)


def test_unseen_values_go_to_oov_bucket(pipeline: FeaturePipeline) -> None:
    new = _items().iloc[[0]].copy()
    new["genre"], new["maker"], new["tags"] = "jazz", "unknown-maker", [["brand-new"]]
    x = pipeline.item_matrix(new)
    col = {n: i for i, n in enumerate(pipeline.item_feature_names())}
    assert x[0, col[f"genre={OOV}"]] == 1 and x[0, col["genre=nature"]] == 0
    assert x[0, col[f"maker={OOV}"]] == 1
    assert x[0, col[f"tag={OOV}"]] == 1


def test_history_aggregates_and_leave_one_out(pipeline: FeaturePipeline) -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    profiles = np.zeros((2, 0), dtype=np.float32)
    users, items, labels = np.array([0, 0, 0, 1]), np.array([0, 1, 2, 2]), np.array([1, 1, 0, 1])
    full = pipeline.user_matrix(profiles, vectors, users, items, labels, n_users=2)
    # u0 liked items 0,1 -> mean (0.5, 0.5); noped item 2 -> (1, 1); 2 likes, 1 nope, like rate 3/5
    np.testing.assert_allclose(full[0], [0.5, 0.5, 1, 1, math.log(3), math.log(2), 3 / 5], rtol=1e-6)
    # u1 liked item 2 only; no nopes -> zeros; like rate 2/3
    np.testing.assert_allclose(full[1], [1, 1, 0, 0, math.log(2), 0, 2 / 3], rtol=1e-6)
    loo = pipeline.leave_one_out_user_matrix(profiles, vectors, users, items, labels, n_users=2)
    # row 0 (u0 liked item 0) without itself: liked {1} -> (0, 1), noped {2}
    np.testing.assert_allclose(loo[0], [0, 1, 1, 1, math.log(2), math.log(2), 2 / 4], rtol=1e-6)
    # row 3 (u1's only swipe) without itself: an empty history
    np.testing.assert_allclose(loo[3], [0, 0, 0, 0, 0, 0, 1 / 2], rtol=1e-6)


def test_profile_columns_scaled_and_one_hot(pipeline: FeaturePipeline) -> None:
    p = pipeline.profile_matrix(pd.DataFrame({"user_id": ["n"], "age": [30.0], "country": ["it"]}))
    # age: mean 30 -> 0; country "it" unseen -> OOV bucket (vocab de, fr, OOV)
    np.testing.assert_allclose(p[0], [0.0, 0, 0, 1])
    missing = pipeline.profile_matrix(pd.DataFrame(index=[0]))  # brand-new user with no profile
    assert missing.shape == (1, 4) and np.isfinite(missing).all()


def test_save_and_load_give_identical_features(pipeline: FeaturePipeline, tmp_path) -> None:
    pipeline.save(tmp_path / "pre")
    again = FeaturePipeline.load(tmp_path / "pre")
    np.testing.assert_array_equal(pipeline.item_matrix(_items()), again.item_matrix(_items()))
    np.testing.assert_array_equal(pipeline.profile_matrix(_users()), again.profile_matrix(_users()))
    assert again.schema_hash() == pipeline.schema_hash()
    assert (tmp_path / "pre" / "spec.json").exists()


def test_unknown_text_encoder_is_rejected() -> None:
    with pytest.raises(ValueError, match="text_encoder='bert'.*available"):
        FeaturePipeline(config=FeatureConfig(text_encoder="bert")).fit(_items(), _users())

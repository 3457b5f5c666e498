"""Trainer, bundle and in-process inference on the tiny synthetic dataset."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ml.bundle.load import load_bundle
from ml.config import ModelConfig
from ml.data.split import time_split_per_user
from ml.inference.engine import InferenceRequestError, RealtimeInferenceEngine, create_standard_inference_engine
from ml.training.trainer import create_standard_trainer


def test_time_split_holds_out_each_users_latest() -> None:
    inter = pd.DataFrame({
        "user_id": ["a"] * 5 + ["b"] * 2 + ["c"],
        "timestamp": pd.to_datetime(["2024-01-05", "2024-01-01", "2024-01-03", "2024-01-02", "2024-01-04",
                                     "2024-01-02", "2024-01-01", "2024-01-01"]),
    })
    split = time_split_per_user(inter, 0.4)
    # a: 5 rows -> 2 latest (01-05, 01-04) held out; b: 2 rows -> floor(0.8)=0; c: 1 row -> 0
    assert split.valid.tolist() == [True, False, False, False, True, False, False, False]
    assert (split.train == ~split.valid).all()
    assert not time_split_per_user(inter, 0.0).valid.any()


def test_no_validation_row_is_older_than_a_training_row_of_the_same_user(tiny_synth) -> None:
    inter = tiny_synth.dataset.interactions
    split = time_split_per_user(inter, 0.2)
    last_train = inter[split.train].groupby("user_id")["timestamp"].max()
    first_valid = inter[split.valid].groupby("user_id")["timestamp"].min()
    joined = pd.concat([last_train, first_valid], axis=1, keys=["train", "valid"]).dropna()
    assert len(joined) > 100 and (joined["train"] <= joined["valid"]).all()


def test_bundle_holds_every_part(tiny_model_dir) -> None:
    for rel in ("keras/two_tower.keras", "keras/user_tower.keras", "keras/item_tower.keras",
                "saved_model/user_tower/saved_model.pb", "saved_model/item_tower/saved_model.pb",
                "preprocessing/pipeline.joblib", "preprocessing/spec.json", "embeddings/item_embeddings.npy",
                "users/user_embeddings.npy", "metadata.json", "config.json", "history.json",
                "checkpoints/best.weights.h5"):
        assert (tiny_model_dir / rel).exists(), rel
    meta = json.loads((tiny_model_dir / "metadata.json").read_text())
    assert meta["embedding_dim"] == 32 and meta["n_items"] == 200 and len(meta["data_fingerprint"]["hash"]) == 64
    history = json.loads((tiny_model_dir / "history.json").read_text())
    assert {"loss", "val_loss", "auc", "val_auc"} <= set(history)
    health = {"health_dead_unit_share", "health_item_effective_rank", "health_user_effective_rank",
              "health_item_mean_cosine", "health_user_mean_cosine"}
    assert health <= set(history) and all(len(history[k]) == len(history["loss"]) for k in health)  # every epoch
    assert health <= set(meta["final_metrics"]) and health <= set(meta["health"])
    assert 0 <= meta["health"]["health_dead_unit_share"] <= 1 and meta["health"]["health_item_effective_rank"] > 1
    bundle = load_bundle(tiny_model_dir)
    d = ModelConfig().id_embedding_dim                       # TINY_CONFIG keeps the default ID width
    assert bundle.id_tables.dim == meta["id_embedding_dim"] == d
    # no user-id vector by default (model.user_id_vector): the user table has the users' rows and width 0
    assert bundle.id_tables.item.shape == (201, d) and bundle.id_tables.user.shape == (301, 0)
    assert bundle.towers().user_tower.input_shape[-1] == bundle.pipeline.user_dim + 2 * d


def test_cold_item_and_user_fall_back_to_the_oov_row(tiny_synth, tiny_config, tmp_path) -> None:
    """An item and a user with no training interaction get the learned OOV row in the bundle;
    the item's embedding is the item tower on [its content ; OOV row]."""
    ds = tiny_synth.dataset
    items = pd.concat([ds.items, ds.items.iloc[[0]].assign(item_id="i_new")], ignore_index=True)
    users = pd.concat([ds.users, ds.users.iloc[[0]].assign(user_id="u_new")], ignore_index=True)
    config = {**tiny_config, "training": {**tiny_config["training"], "epochs": 1},
              "model": {**tiny_config["model"], "user_id_vector": True}}
    create_standard_trainer(model_dir=tmp_path / "m", config=config).train(
        user_features=users, item_features=items, interactions=ds.interactions.drop(columns=["label"]))
    b = load_bundle(tmp_path / "m")
    new_item, new_user = b.item_index["i_new"], b.user_index["u_new"]
    oov_item, oov_user = b.id_tables.item[-1], b.id_tables.user[-1]
    np.testing.assert_array_equal(b.id_tables.item[new_item], oov_item)
    np.testing.assert_array_equal(b.id_tables.user[new_user], oov_user)
    assert not np.array_equal(b.id_tables.item[0], oov_item)            # a known item keeps its own row
    x = np.concatenate([b.item_features[new_item], oov_item])[None, :]
    np.testing.assert_allclose(b.item_embeddings[new_item], np.asarray(b.load_item_tower()(x))[0], atol=1e-5)
    # same title/tags as item 0 but the OOV id: the content path alone does not make it item 0
    assert not np.allclose(b.item_embeddings[new_item], b.item_embeddings[0], atol=1e-3)


def test_saved_model_tower_matches_keras_tower(tiny_model_dir) -> None:
    import tensorflow as tf

    bundle = load_bundle(tiny_model_dir)
    x = bundle.item_inputs()[:7]  # [content features ; item-id vectors]: what the item tower reads
    keras_out = np.asarray(bundle.load_item_tower()(x, training=False))
    sm = tf.saved_model.load(str(tiny_model_dir / "saved_model" / "item_tower"))
    sm_out = np.asarray(sm.serve(tf.constant(x)))
    np.testing.assert_allclose(keras_out, sm_out, atol=1e-5)
    np.testing.assert_allclose(bundle.item_embeddings[:7], keras_out, atol=1e-5)


def test_recommendations_rank_exclude_seen_and_restrict(tiny_model_dir) -> None:
    engine = RealtimeInferenceEngine(tiny_model_dir)
    b = engine.bundle
    user = b.user_ids[0]
    recs = engine.get_recommendations(user, top_k=10)
    assert [r["rank"] for r in recs] == list(range(1, 11))
    scores = [r["score"] for r in recs]
    assert scores == sorted(scores, reverse=True)
    seen = {b.item_ids[i] for i in b.history(0)[0]}
    assert not seen & {r["item_id"] for r in recs}
    # the scores are the dot products of the exported embeddings
    row = b.item_index[recs[0]["item_id"]]
    assert recs[0]["score"] == pytest.approx(float(b.item_embeddings[row] @ b.user_embeddings[0]), rel=1e-5)
    cands = b.item_ids[:5]
    restricted = engine.get_recommendations(user, candidate_items=cands, top_k=3, exclude_seen=False)
    assert len(restricted) == 3 and {r["item_id"] for r in restricted} <= set(cands)


def test_cold_user_from_recent_swipes(tiny_model_dir) -> None:
    engine = RealtimeInferenceEngine(tiny_model_dir)
    liked = engine.bundle.item_ids[:3]
    recs = engine.get_recommendations(None, liked_items=liked, noped_items=engine.bundle.item_ids[3:4], top_k=5)
    assert len(recs) == 5 and not set(liked) & {r["item_id"] for r in recs}


@pytest.mark.parametrize("kwargs, message", [
    ({"user_id": "nobody"}, "unknown user_id 'nobody' with no history"),
    ({"user_id": "u00001", "top_k": 0}, "top_k=0 must be a positive integer"),
    ({"user_id": "u00001", "candidate_items": ["zzz"]}, "candidate_items: 1 unknown item id"),
    ({"user_id": None, "liked_items": ["zzz"]}, "liked_items: 1 unknown item id"),
])
def test_bad_requests_raise_clear_errors(tiny_model_dir, kwargs, message) -> None:
    with pytest.raises(InferenceRequestError, match=message):
        RealtimeInferenceEngine(tiny_model_dir).get_recommendations(**kwargs)


def test_standard_engine_and_missing_bundle(tiny_model_dir, tmp_path) -> None:
    assert create_standard_inference_engine(model_dir=tiny_model_dir).bundle.embedding_dim == 32
    with pytest.raises(FileNotFoundError, match="not a towerops model bundle: missing metadata.json"):
        RealtimeInferenceEngine(tmp_path)


@pytest.mark.slow
def test_seed_api_with_dataframes(tiny_synth, tiny_config, tmp_path) -> None:
    ds = tiny_synth.dataset
    config = {**tiny_config, "training": {**tiny_config["training"], "epochs": 1}}
    history = create_standard_trainer(model_dir=tmp_path / "m", config=config).train(
        user_features=ds.users, item_features=ds.items, interactions=ds.interactions.drop(columns=["label"]))
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0])
    assert (tmp_path / "m" / "metadata.json").exists()


def test_trainer_rejects_data_without_likes(tiny_synth, tiny_config, tmp_path) -> None:
    ds = tiny_synth.dataset
    inter = ds.interactions.copy()
    inter["decision"] = "nope"
    inter = inter.drop(columns=["label", "rating"])
    with pytest.raises(ValueError, match="holds no likes"):
        create_standard_trainer(tmp_path, tiny_config).train(user_features=ds.users, item_features=ds.items,
                                                             interactions=inter)


def test_prepare_reuses_what_standardisation_computed_bit_for_bit(tiny_synth, tiny_config, tmp_path) -> None:
    """The training rows' user inputs and the item vectors kept from fit_scaling equal a fresh computation."""
    trainer = create_standard_trainer(model_dir=tmp_path / "m", config=tiny_config)
    p = trainer.prepare(tiny_synth.dataset)
    assert trainer.config.features.standardize and p.train_user_features is not None
    tr = p.split.train
    fresh = trainer.pipeline.leave_one_out_user_matrix(p.profiles, p.item_vectors, p.user_rows[tr], p.item_rows[tr],
                                                       p.labels[tr], len(p.user_ids))
    np.testing.assert_array_equal(p.train_user_features, fresh)
    np.testing.assert_array_equal(p.item_vectors, trainer.pipeline.item_matrix(tiny_synth.dataset.items))
    # standardised over the training rows: mean 0 where a column varies
    varying = fresh.std(axis=0) > 1e-2
    np.testing.assert_allclose(fresh[:, varying].mean(axis=0), 0.0, atol=1e-3)
    x_train, _, _ = trainer.training_arrays(p)
    assert x_train["user_features"] is p.train_user_features

"""Real-time engine: numpy towers, exact and ANN scoring, tie rules, request validation."""

from __future__ import annotations

import numpy as np
import pytest
from support.ranking import assert_same_ranking

from ml.inference.engine import InferenceRequestError, RealtimeInferenceEngine, parse_top_k
from ml.inference.scoring import top_k_indices
from ml.inference.towers import NumpyTower, UnsupportedTower, read_keras_tower


def test_numpy_towers_match_keras(tiny_model_dir) -> None:
    engine = RealtimeInferenceEngine(tiny_model_dir)
    b = engine.bundle
    rng = np.random.default_rng(3)
    keras_user = b.user_tower
    x = rng.standard_normal((64, keras_user.input_shape[-1])).astype(np.float32)
    np.testing.assert_allclose(engine.user_tower(x), np.asarray(keras_user(x, training=False)), atol=1e-5)
    item_tower = NumpyTower.from_keras_file(tiny_model_dir / "keras" / "item_tower.keras")
    # the exported catalog embeddings came from Keras: the numpy pass reproduces them
    np.testing.assert_allclose(item_tower(b.item_inputs()), b.item_embeddings, atol=1e-5)
    assert isinstance(engine.user_tower, NumpyTower)


def test_numpy_tower_blocks_and_in_place_ops_leave_inputs_and_results_alone(tmp_path) -> None:
    """Large inputs run in row blocks with in-place activations: same rows as one pass, caller's array untouched."""
    import keras

    inp = keras.Input(shape=(5,), name="x")
    h = keras.layers.Dense(4, activation="relu", name="d1")(inp)
    h = keras.layers.Dense(3, activation="sigmoid", name="d2")(h)
    out = keras.layers.UnitNormalization(name="norm")(keras.layers.Dense(3, activation="tanh", name="d3")(h))
    keras.Model(inp, out).save(tmp_path / "t.keras")
    norm_only = keras.layers.UnitNormalization(name="norm")(inp)
    keras.Model(inp, norm_only).save(tmp_path / "n.keras")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((NumpyTower.BLOCK * 2 + 7, 5)).astype(np.float32)
    given = x.copy()
    tower = NumpyTower.from_keras_file(tmp_path / "t.keras")
    blocked = tower(x)
    np.testing.assert_array_equal(x, given)
    np.testing.assert_array_equal(blocked[:9], tower(x[:9]))
    np.testing.assert_array_equal(blocked[-7:], tower(x[-7:]))
    keras_model = keras.saving.load_model(tmp_path / "t.keras")
    np.testing.assert_allclose(blocked, np.asarray(keras_model(x)), atol=1e-5)
    # a tower that only normalises would otherwise write into the caller's array
    normalised = NumpyTower.from_keras_file(tmp_path / "n.keras")(x[:10])
    np.testing.assert_array_equal(x, given)
    np.testing.assert_allclose(normalised, x[:10] / np.linalg.norm(x[:10], axis=1, keepdims=True), atol=1e-6)


def test_cold_user_embedding_is_the_keras_user_tower_on_the_history(tiny_model_dir) -> None:
    engine = RealtimeInferenceEngine(tiny_model_dir)
    b = engine.bundle
    liked, noped = np.array([1, 5, 9]), np.array([2])
    emb = engine.embed_history(liked, noped)
    feats = b.item_features
    agg = b.pipeline.history_aggregates(feats[liked].sum(0, keepdims=True), feats[noped].sum(0, keepdims=True),
                                        np.array([3]), np.array([1]))
    # [standardised content ; mean liked item-id vector ; mean noped item-id vector ; the OOV user row (a cold user)]
    tables = b.id_tables
    assert tables.dim > 0
    content = np.concatenate([agg, engine._default_profile()[None, :]], axis=1)
    scaler = b.pipeline.user_scaling  # features.standardize (the default): content columns to mean 0, variance 1
    assert scaler is not None
    content = (content - scaler.mean) / scaler.scale
    x = np.concatenate([content, tables.item[liked].mean(0, keepdims=True),
                        tables.item[noped].mean(0, keepdims=True), tables.user[-1:]], axis=1).astype(np.float32)
    np.testing.assert_allclose(emb, np.asarray(b.user_tower(x, training=False))[0], atol=1e-5)
    assert np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-5)
    # a known user sending new swipes keeps their own id vector, if the model has one, and their stored history
    seen, labels = b.history(0)
    known = engine.embed_history(np.r_[seen[labels == 1], liked], np.r_[seen[labels == 0], noped], b.profiles[0],
                                 user_row=0)
    x0 = b.user_inputs(b.profiles[:1], np.zeros(len(seen) + 4, np.int64), np.r_[seen, liked, noped],
                       np.r_[labels, [1, 1, 1, 0]], id_rows=np.array([0]))
    w = tables.user.shape[1]  # 0 without model.user_id_vector (the default): nothing of the own id then
    np.testing.assert_allclose(x0[0, x0.shape[1] - w:], tables.user[0])
    np.testing.assert_allclose(known, np.asarray(b.user_tower(x0, training=False))[0], atol=1e-5)


def test_read_keras_tower_refuses_layers_it_cannot_run(tmp_path) -> None:
    import keras

    inp = keras.Input(shape=(4,), name="x")
    out = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(3, name="d")(inp))
    keras.Model(inp, out, name="odd").save(tmp_path / "odd.keras")
    with pytest.raises(UnsupportedTower, match="layer 'bn' is a BatchNormalization"):
        read_keras_tower(tmp_path / "odd.keras")


def test_top_k_indices_breaks_ties_by_row_and_sorts_minus_inf_last() -> None:
    s = np.array([1.0, 3.0, 3.0, 2.0, -np.inf], dtype=np.float32)
    assert top_k_indices(s, 3).tolist() == [1, 2, 3]
    assert top_k_indices(s, 10).tolist() == [1, 2, 3, 0, 4]
    m = np.vstack([s, s[::-1]])
    assert top_k_indices(m, 2).tolist() == [[1, 2], [2, 3]]
    assert top_k_indices(s, 0).shape == (0,)


def test_exact_engine_equals_numpy_brute_force(tiny_model_dir) -> None:
    engine = RealtimeInferenceEngine(tiny_model_dir, scoring="exact")
    b = engine.bundle
    for row in (0, 7, 123):
        scores = b.item_embeddings @ b.user_embeddings[row]
        seen = b.history(row)[0]
        scores[seen] = -np.inf
        expected = [b.item_ids[i] for i in np.argsort(-scores, kind="stable")[:10]]
        got = engine.get_recommendations(b.user_ids[row], top_k=10)
        assert [r["item_id"] for r in got] == expected
        assert [r["rank"] for r in got] == list(range(1, 11))
    # exclude_seen=False may return swiped items; top_k larger than the catalog returns it all
    everything = engine.get_recommendations(b.user_ids[0], top_k=10_000, exclude_seen=False)
    assert len(everything) == len(b.item_ids)


def test_ann_engine_with_every_list_probed_equals_exact_and_recall_is_measured(tiny_model_dir, tmp_path) -> None:
    import shutil

    from ml.inference.ann import build_bundle_index, build_index, has_index, recall_at_k

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_model_dir, bundle)
    meta = build_bundle_index(bundle, factory="IVF4,Flat", nprobe=4, k=10, n_queries=100)
    assert has_index(bundle) and meta["recall_at_10"] == pytest.approx(1.0)
    exact = RealtimeInferenceEngine(bundle, scoring="exact")
    ann = RealtimeInferenceEngine(bundle)  # auto: the bundle has an index
    assert ann.scoring == "ann" and exact.scoring == "exact"
    for user in exact.bundle.user_ids[:20]:
        a, e = ann.get_recommendations(user, top_k=5), exact.get_recommendations(user, top_k=5)
        assert [r["item_id"] for r in a] == [r["item_id"] for r in e]
        np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in e], atol=1e-5)
    # probing one list of four loses some neighbours: recall is measured, not assumed
    emb = exact.item_matrix
    one = build_index(emb, factory="IVF4,Flat", nprobe=1)
    recall = recall_at_k(one, emb, exact.bundle.user_embeddings[:100], k=10)
    assert 0.0 < recall < 1.0


def test_stale_ann_index_is_refused(tiny_model_dir, tmp_path) -> None:
    import shutil

    from ml.inference.ann import build_bundle_index, load_index

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_model_dir, bundle)
    build_bundle_index(bundle, factory="Flat", n_queries=10)
    other = np.load(bundle / "embeddings" / "item_embeddings.npy")[::-1].copy()
    with pytest.raises(ValueError, match="was built for another catalog.*towerops build-index"):
        load_index(bundle, other)


@pytest.mark.parametrize("value, ok", [(5, 5), ("7", 7), (3.0, 3), (0, None), (-2, None), (2.5, None), ("abc", None),
                                       (True, None), (None, None)])
def test_parse_top_k(value, ok) -> None:
    if ok is None:
        with pytest.raises(InferenceRequestError, match="must be a positive integer"):
            parse_top_k(value)
    else:
        assert parse_top_k(value) == ok


def test_empty_candidate_list_and_bad_scoring_mode(tiny_model_dir, monkeypatch) -> None:
    engine = RealtimeInferenceEngine(tiny_model_dir)
    with pytest.raises(InferenceRequestError, match="candidate_items is an empty list"):
        engine.get_recommendations(engine.bundle.user_ids[0], candidate_items=[])
    monkeypatch.setenv("TOWEROPS_SCORING", "fast")
    with pytest.raises(ValueError, match="TOWEROPS_SCORING='fast' is not one of auto, exact, ann"):
        RealtimeInferenceEngine(tiny_model_dir)


def test_known_user_with_new_swipes_goes_through_the_tower(tiny_model_dir) -> None:
    engine = RealtimeInferenceEngine(tiny_model_dir)
    b = engine.bundle
    fresh = [i for i in b.item_ids[:40] if b.item_index[i] not in set(b.history(0)[0].tolist())][:2]
    rec = engine.recommend(b.user_ids[0], liked_items=fresh, top_k=5)
    assert rec.cold and not set(rec.item_rows.tolist()) & {b.item_index[i] for i in fresh}
    assert not engine.recommend(b.user_ids[0], top_k=5).cold


def _low_rank_catalog(n: int, d: int, hidden: int, seed: int = 0) -> np.ndarray:
    """What a tower with a `hidden`-wide last layer and a d-wide linear projection emits."""
    rng = np.random.default_rng(seed)
    h = np.maximum(rng.standard_normal((n, hidden)), 0)
    x = h @ rng.standard_normal((hidden, d)) + rng.standard_normal(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_rank_reduction_is_exact_for_projected_embeddings() -> None:
    from ml.inference.scoring import reduce_rank

    emb = _low_rank_catalog(3000, 64, hidden=8)
    red = reduce_rank(emb)
    assert red is not None and red.rank == 9 and red.max_residual < 2e-5
    users = _low_rank_catalog(50, 64, hidden=8, seed=1)
    np.testing.assert_allclose(red.project(users) @ red.items.T, users @ emb.T, atol=2e-5)
    full_rank = np.random.default_rng(2).standard_normal((3000, 64)).astype(np.float32)
    assert reduce_rank(full_rank) is None


def test_engine_scores_in_the_reduced_basis_with_the_same_answers(tiny_model_dir, tmp_path, monkeypatch) -> None:
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_model_dir, bundle)
    n_items = len(np.load(bundle / "embeddings" / "item_embeddings.npy"))
    np.save(bundle / "embeddings" / "item_embeddings.npy", _low_rank_catalog(n_items, 32, hidden=6))
    reduced = RealtimeInferenceEngine(bundle)
    assert reduced.reduction is not None and reduced.reduction.rank == 7
    assert reduced.scoring_matrix.shape == (n_items, 7)
    monkeypatch.setenv("TOWEROPS_LOWRANK", "off")
    full = RealtimeInferenceEngine(bundle)
    assert full.reduction is None
    items = np.load(bundle / "embeddings" / "item_embeddings.npy").astype(np.float64)
    for row, user in enumerate(full.bundle.user_ids[:30]):
        a, b = reduced.get_recommendations(user, top_k=8), full.get_recommendations(user, top_k=8)
        u = np.asarray(full.bundle.user_embeddings[row], dtype=np.float64)
        assert_same_ranking([r["item_id"] for r in a], [r["score"] for r in a], [r["item_id"] for r in b],
                            [r["score"] for r in b], atol=2e-5,
                            true_score=lambda item: float(items[full.bundle.item_index[item]] @ u))
    monkeypatch.setenv("TOWEROPS_LOWRANK", "maybe")
    with pytest.raises(ValueError, match="TOWEROPS_LOWRANK='maybe' must be auto, on or off"):
        RealtimeInferenceEngine(bundle)


def test_ann_index_over_the_reduced_catalog(tiny_model_dir, tmp_path) -> None:
    import shutil

    from ml.inference.ann import build_bundle_index

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_model_dir, bundle)
    n_items = len(np.load(bundle / "embeddings" / "item_embeddings.npy"))
    np.save(bundle / "embeddings" / "item_embeddings.npy", _low_rank_catalog(n_items, 32, hidden=6, seed=4))
    meta = build_bundle_index(bundle, factory="IVF4,Flat", nprobe=4, n_queries=50)
    assert meta["rank"] == 7 and meta["dim"] == 7 and meta["embedding_dim"] == 32
    assert (bundle / "ann" / "basis.npy").exists() and meta["recall_at_10"] > 0.99
    ann = RealtimeInferenceEngine(bundle, scoring="ann")
    exact = RealtimeInferenceEngine(bundle, scoring="exact", lowrank=False)
    assert ann.ann.dim == 7 and ann.reduction.rank == 7
    for user in exact.bundle.user_ids[:20]:
        a, e = ann.get_recommendations(user, top_k=6), exact.get_recommendations(user, top_k=6)
        np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in e], atol=2e-5)

"""Batch scoring to Parquet: same answers as the real-time engine, versions switched atomically."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.ranking import assert_same_ranking

from ml.inference.batch.parquet import current_version
from ml.inference.batch.run import run_batch
from ml.inference.engine import RealtimeInferenceEngine


def _same_ranking(batch_items, batch_scores, rt: list[dict], bundle, user_id: str) -> None:
    """Identical lists, except that near-equal scores (BLAS sgemm vs sgemv rounding) may swap;
    each score is the dot product of the user's and the item's exported embeddings."""
    user = np.asarray(bundle.user_embeddings[bundle.user_index[user_id]], dtype=np.float64)

    def true_score(item: str) -> float:
        return float(np.asarray(bundle.item_embeddings[bundle.item_index[item]], dtype=np.float64) @ user)

    assert_same_ranking(batch_items, batch_scores, [r["item_id"] for r in rt], [r["score"] for r in rt], atol=2e-5,
                        true_score=true_score)


def test_batch_writes_every_user_and_matches_the_engine(tiny_model_dir, tmp_path) -> None:
    res = run_batch(tiny_model_dir, tmp_path / "out", top_k=7, chunk_size=64)
    engine = RealtimeInferenceEngine(tiny_model_dir)
    b = engine.bundle
    assert res.n_users == len(b.user_ids) and current_version(tmp_path / "out") == res.version
    cur = tmp_path / "out" / "current"
    assert os.readlink(cur) == f"versions/{res.version}"
    recs = pq.read_table(cur / "recommendations.parquet").to_pandas()
    assert recs.user_id.tolist() == b.user_ids
    for row in recs.sample(40, random_state=0).itertuples():
        _same_ranking(list(row.items), list(row.scores), engine.get_recommendations(row.user_id, top_k=7), b,
                      row.user_id)
    users = pq.read_table(cur / "user_embeddings.parquet")
    items = pq.read_table(cur / "item_embeddings.parquet")
    assert users.num_rows == len(b.user_ids) and items.num_rows == len(b.item_ids)
    emb_type = items.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(emb_type) and emb_type.list_size == 32 and emb_type.value_type == pa.float32()
    np.testing.assert_array_equal(np.stack(items.column("embedding").to_numpy(zero_copy_only=False)),
                                  b.item_embeddings)
    assert res.users_per_min > 0 and res.summary()["postgres"] is None


def test_new_version_switches_current_and_old_versions_are_pruned(tiny_model_dir, tmp_path) -> None:
    out = tmp_path / "out"
    first = run_batch(tiny_model_dir, out, top_k=3, keep_versions=2)
    second = run_batch(tiny_model_dir, out, top_k=5, keep_versions=2)
    assert current_version(out) == second.version
    assert pq.read_table(out / "current" / "recommendations.parquet").column("items").to_pylist()[0].__len__() == 5
    third = run_batch(tiny_model_dir, out, top_k=4, keep_versions=2)
    assert sorted(p.name for p in (out / "versions").iterdir()) == sorted([second.version, third.version])
    assert first.version not in os.listdir(out / "versions")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging or temp links left


def test_failed_run_leaves_the_published_version_alone(tiny_model_dir, tmp_path) -> None:
    out = tmp_path / "out"
    good = run_batch(tiny_model_dir, out, top_k=3)
    with pytest.raises(ValueError, match="chunk_size=0 must be a positive number of users"):
        run_batch(tiny_model_dir, out, chunk_size=0)
    with pytest.raises(ValueError, match=f"batch version {good.version} already exists"):
        run_batch(tiny_model_dir, out, version=good.version)
    assert current_version(out) == good.version and os.listdir(out / "versions") == [good.version]
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]


def test_ann_batch_with_every_list_probed_equals_exact(tiny_model_dir, tmp_path) -> None:
    import shutil

    from ml.inference.ann import build_bundle_index

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_model_dir, bundle)
    build_bundle_index(bundle, factory="IVF4,Flat", nprobe=4, n_queries=20)
    exact = run_batch(bundle, tmp_path / "exact", top_k=6, scoring="exact")
    ann = run_batch(bundle, tmp_path / "ann", top_k=6, scoring="ann")
    e = pq.read_table(exact.version_dir / "recommendations.parquet").to_pandas()
    a = pq.read_table(ann.version_dir / "recommendations.parquet").to_pandas()
    assert ann.scoring == "ann" and (e.user_id == a.user_id).all()
    b = RealtimeInferenceEngine(bundle, scoring="exact").bundle
    for user, (ei, es), (ai, as_) in zip(e.user_id, zip(e["items"], e.scores), zip(a["items"], a.scores)):
        user_emb = np.asarray(b.user_embeddings[b.user_index[user]], dtype=np.float64)
        assert_same_ranking(ai, as_, ei, es, atol=2e-5,
                            true_score=lambda item: float(np.asarray(b.item_embeddings[b.item_index[item]]) @ user_emb))


def test_faiss_and_numpy_backends_agree(tiny_model_dir) -> None:
    from ml.inference.batch.scoring import score_users

    engine = RealtimeInferenceEngine(tiny_model_dir)
    f = list(score_users(engine, 8, 50, backend="faiss"))
    n = list(score_users(engine, 8, 50, backend="numpy"))
    fr, nr = np.concatenate([c.item_rows for c in f]), np.concatenate([c.item_rows for c in n])
    fs, ns = np.concatenate([c.scores for c in f]), np.concatenate([c.scores for c in n])
    items, users = np.asarray(engine.bundle.item_embeddings, np.float64), np.asarray(engine.bundle.user_embeddings, np.float64)
    user_rows = np.concatenate([c.user_rows for c in f])
    assert (user_rows == np.concatenate([c.user_rows for c in n])).all() and (fr >= 0).all()
    for k, u in enumerate(user_rows.tolist()):
        assert_same_ranking(fr[k], fs[k], nr[k], ns[k], atol=2e-5, true_score=lambda i: float(items[i] @ users[u]))
    seen = {(u, i) for u in range(len(engine.bundle.user_ids)) for i in engine.bundle.history(u)[0].tolist()}
    assert not any((u, i) in seen for u, row in enumerate(fr.tolist()) for i in row)
    with pytest.raises(ValueError, match="backend='gpu' is not one of auto, faiss, numpy"):
        next(score_users(engine, backend="gpu"))


def test_ann_batch_always_fills_k_unseen_items(tiny_model_dir, tmp_path) -> None:
    """With one of four lists probed the index often returns too few unseen items: those users get an exact scan."""
    import shutil

    from ml.inference.ann import build_bundle_index
    from ml.inference.batch.scoring import score_users

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_model_dir, bundle)
    build_bundle_index(bundle, factory="IVF4,Flat", nprobe=1, n_queries=20)
    engine = RealtimeInferenceEngine(bundle, scoring="ann")
    rows = np.concatenate([c.item_rows for c in score_users(engine, 60, 128)])
    assert rows.shape == (len(engine.bundle.user_ids), 60) and (rows >= 0).all()
    for user, recs in enumerate(rows.tolist()):
        assert len(set(recs)) == 60 and not set(recs) & set(engine.bundle.history(user)[0].tolist())

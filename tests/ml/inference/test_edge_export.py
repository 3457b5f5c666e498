"""The edge export (tfjs/edge.json): its layout builds the engine's user-tower inputs, it references
the bundle's own matrices, refuses a layout that drifted from the engine, and ships the exact
low-rank catalog when the embeddings have one."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ml.inference.edge_export import EdgeExportError, build_user_input, export_edge


def _arrays(out_dir, doc) -> dict[str, np.ndarray]:
    """edge.json's arrays read back from the export (its own .f32 files) and the bundle (referenced .npy)."""
    bundle, arrays = out_dir.parent, {}

    def read(spec):
        rel = spec["path"]
        path = out_dir / rel.split("/", 1)[1] if rel.startswith("tfjs/") else bundle / rel
        dtype = {"float32": "<f4", "int32": "<i4"}[spec["dtype"]]
        return np.load(path) if rel.endswith(".npy") else np.fromfile(path, dtype).reshape(spec["shape"])

    for name, spec in doc["arrays"].items():
        if spec.get("format") == "csr":
            from scipy.sparse import csr_matrix

            parts = (read(spec["values"]), read(spec["indices"]), read(spec["indptr"]))
            arrays[name] = csr_matrix(parts, shape=spec["shape"]).toarray()
        else:
            arrays[name] = read(spec)
    return arrays


@pytest.fixture
def bundle_copy(tiny_model_dir, tmp_path):
    dest = tmp_path / "bundle"
    shutil.copytree(tiny_model_dir, dest)
    return dest


def test_the_layout_builds_the_engines_cold_user_inputs(bundle_copy) -> None:
    from ml.bundle.load import load_bundle
    from ml.inference.engine import RealtimeInferenceEngine

    path = export_edge(bundle_copy, bundle_copy / "tfjs")
    doc = json.loads(path.read_text())
    b = load_bundle(bundle_copy)
    assert (doc["format"], doc["recipe"], doc["n_items"]) == (1, "towerops.user_input.v2", len(b.item_ids))
    assert doc["feature_schema_hash"] == b.metadata["feature_schema_hash"] and doc["checked_max_abs_diff"] <= 1e-5
    feats = doc["arrays"]["item_features"]
    density = np.count_nonzero(b.item_features) / b.item_features.size
    if density <= 0.4:                                         # mostly one-hot columns: CSR rows of the same values
        assert feats["format"] == "csr" and feats["shape"] == list(b.item_features.shape)
        nnz = int(np.count_nonzero(b.item_features))
        assert feats["values"]["shape"] == feats["indices"]["shape"] == [nnz]
        assert feats["indptr"]["shape"] == [len(b.item_ids) + 1]
    else:                                                      # standardised (dense): the bundle's own .npy, not a copy
        assert "format" not in feats and feats["path"] == "embeddings/item_features.npy"
    assert doc["arrays"]["default_profile"]["path"] == "tfjs/edge/default_profile.f32"
    kinds = [(blk["kind"], blk.get("of"), blk.get("array")) for blk in doc["layout"]]
    assert kinds[:4] == [("mean", "liked", "item_features"), ("mean", "noped", "item_features"), ("history", None, None),
                         ("constant", None, "default_profile")]
    rest = kinds[4:]
    if b.pipeline.user_scaling is not None:                   # features.standardize (the default): content scaled
        assert doc["layout"][4] == {"kind": "standardize", "mean": "user_mean", "scale": "user_scale"}
        rest = kinds[5:]
    if b.id_tables.dim:                                                  # the hybrid towers' ID part, in order
        own = [("constant", None, "user_oov")] if b.id_tables.user.shape[1] else []   # model.user_id_vector
        assert rest == [("mean", "liked", "item_id_table"), ("mean", "noped", "item_id_table"), *own]
        assert doc["arrays"]["item_id_table"]["path"] == "embeddings/item_id_table.npy"

    arrays = _arrays(bundle_copy / "tfjs", doc)
    assert np.array_equal(arrays["item_features"], b.item_features)
    engine = RealtimeInferenceEngine(bundle_copy, scoring="exact", lowrank=False)
    profile = engine._default_profile()[None, :]
    rng = np.random.default_rng(3)
    for n_like, n_nope in ((1, 0), (0, 2), (4, 3), (9, 1)):
        rows = rng.choice(len(b.item_ids), n_like + n_nope, replace=False)
        liked, noped = rows[:n_like], rows[n_like:]
        x = build_user_input(doc["layout"], arrays, liked, noped)
        want = b.user_inputs(profile, np.zeros(len(rows), np.int64), rows,
                             np.r_[np.ones(n_like, np.int64), np.zeros(n_nope, np.int64)], id_rows=np.array([-1]))[0]
        assert x.shape == (doc["user_dim"],)
        np.testing.assert_allclose(x, want, atol=1e-6)


def test_a_layout_that_drifted_from_the_engine_is_refused(bundle_copy, monkeypatch) -> None:
    import ml.inference.edge_export as edge_export

    real = edge_export.edge_layout

    def swapped(engine):  # liked and noped means exchanged: same width, wrong input
        layout, arrays = real(engine)
        for blk in layout:
            if blk["kind"] == "mean":
                blk["of"] = {"liked": "noped", "noped": "liked"}[blk["of"]]
        return layout, arrays

    monkeypatch.setattr(edge_export, "edge_layout", swapped)
    with pytest.raises(EdgeExportError, match="does not reproduce the engine's cold-user embeddings.*edge_layout"):
        export_edge(bundle_copy, bundle_copy / "tfjs")
    assert not (bundle_copy / "tfjs" / "edge.json").exists()


def test_a_low_rank_catalog_ships_in_its_own_basis(bundle_copy) -> None:
    """An item tower whose last hidden layer is narrow (4 units -> 32-d, with a bias): its embeddings
    span 5 dimensions, found from the weights, and ship as n x 5 floats with the same scores."""
    import keras

    from ml.bundle.load import load_bundle
    from ml.model.towers import build_tower

    b = load_bundle(bundle_copy)
    x = b.item_inputs()
    keras.utils.set_random_seed(1)
    tower = build_tower(x.shape[1], [16, 4], b.embedding_dim, 0.0, 0.0, "item_tower")
    projection = tower.get_layer("item_tower_projection")
    kernel, bias = projection.get_weights()
    projection.set_weights([kernel, np.random.default_rng(2).standard_normal(bias.shape).astype(np.float32)])
    tower.save(bundle_copy / "keras" / "item_tower.keras")
    emb = np.asarray(tower(x), dtype=np.float32)
    np.save(bundle_copy / "embeddings" / "item_embeddings.npy", emb)

    doc = json.loads(export_edge(bundle_copy, bundle_copy / "tfjs").read_text())
    scoring = doc["scoring"]
    assert scoring["kind"] == "lowrank" and scoring["rank"] == 5 and scoring["max_residual"] <= 2e-5
    items = np.fromfile(bundle_copy / "tfjs" / "edge" / "items_lowrank.f32", "<f4").reshape(scoring["items"]["shape"])
    basis = np.fromfile(bundle_copy / "tfjs" / "edge" / "lowrank_basis.f32", "<f4").reshape(scoring["basis"]["shape"])
    assert items.shape == (len(emb), 5) and basis.shape == (emb.shape[1], 5)
    np.testing.assert_allclose(basis.T @ basis, np.eye(5), atol=1e-5)                # orthonormal
    rng = np.random.default_rng(0)
    u = rng.standard_normal(emb.shape[1]).astype(np.float32)
    u /= np.linalg.norm(u)
    np.testing.assert_allclose(items @ (u @ basis), emb @ u, atol=2e-5)            # the same scores

    full = json.loads(export_edge(bundle_copy, bundle_copy / "tfjs", lowrank=False).read_text())
    assert full["scoring"] == {"kind": "full"} and not (bundle_copy / "tfjs" / "edge" / "items_lowrank.f32").exists()


def test_a_full_rank_catalog_ships_as_it_is(bundle_copy) -> None:
    """The tiny towers' last hidden layer (32 units) spans all 32 dimensions: nothing to reduce."""
    doc = json.loads(export_edge(bundle_copy, bundle_copy / "tfjs").read_text())
    assert doc["scoring"] == {"kind": "full"} and doc["item_embeddings"] == "embeddings/item_embeddings.npy"

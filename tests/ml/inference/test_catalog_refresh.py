"""Catalog refresh on a trained bundle: old rows bit for bit, changed and new items embedded by the
same item tower (new ones through the OOV id row, as Keras would), removed items leave with the
users' seen rows renumbered, and a second refresh featurises only what changed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def _catalog(tiny_synth) -> tuple[pd.DataFrame, pd.DataFrame]:
    items = tiny_synth.dataset.items.copy()
    new = items.head(12).copy()
    new["item_id"] = [f"new{i}" for i in range(12)]
    new["title"] = new["title"] + " remastered"
    current = pd.concat([items.iloc[3:], new], ignore_index=True)       # the first 3 items are gone
    current.loc[current["item_id"] == items["item_id"].iloc[10], "title"] = "a completely different title"
    return current, new


def test_refresh_keeps_old_rows_and_embeds_changed_and_new_items(tiny_model_dir, tiny_synth, tmp_path) -> None:
    from ml.bundle.load import load_bundle
    from ml.evaluation.catalog import align_catalog
    from ml.inference.catalog import catalog_hash, refresh_catalog, towers_fingerprint
    from ml.inference.engine import RealtimeInferenceEngine

    current, new = _catalog(tiny_synth)
    result = refresh_catalog(tiny_model_dir, current, tmp_path / "refreshed")
    old, fresh = load_bundle(tiny_model_dir), load_bundle(tmp_path / "refreshed")
    gone = set(old.item_ids[:3])
    changed_id = str(tiny_synth.dataset.items["item_id"].iloc[10])
    assert (result.n_added, result.n_removed, result.n_changed) == (12, 3, 1)
    assert fresh.item_ids[-12:] == list(new["item_id"]) and not gone & set(fresh.item_ids)

    kept = [i for i in old.item_ids if i not in gone and i != changed_id]
    assert np.array_equal(fresh.item_embeddings[fresh.item_id_rows(kept)], old.item_embeddings[old.item_id_rows(kept)])
    assert np.array_equal(fresh.id_tables.item[fresh.item_id_rows(kept)], old.id_tables.item[old.item_id_rows(kept)])
    row_old, row_new = old.item_index[changed_id], fresh.item_index[changed_id]
    assert not np.array_equal(fresh.item_embeddings[row_new], old.item_embeddings[row_old])
    assert np.array_equal(fresh.id_tables.item[row_new], old.id_tables.item[row_old])  # its learned id row stays

    # new items: what the Keras item tower gives them through the content path + OOV row
    aligned, _ = align_catalog(old, current)
    np.testing.assert_allclose(fresh.item_embeddings[fresh.item_id_rows(new["item_id"])],
                               aligned.item_embeddings[aligned.item_id_rows(new["item_id"])], atol=1e-5)
    assert (fresh.item_popularity[-12:] == 0).all()

    # users' histories renumbered: every seen row points at the same item id as before
    for user in range(0, len(old.user_ids), 37):
        before = [old.item_ids[r] for r in old.history(user)[0] if old.item_ids[r] not in gone]
        assert [fresh.item_ids[r] for r in fresh.history(user)[0]] == before

    assert towers_fingerprint(tmp_path / "refreshed") == towers_fingerprint(tiny_model_dir)
    assert catalog_hash(tmp_path / "refreshed") != catalog_hash(tiny_model_dir)
    assert RealtimeInferenceEngine(tmp_path / "refreshed").get_recommendations(user_id=old.user_ids[0], top_k=5)

    again = refresh_catalog(tmp_path / "refreshed", current, tmp_path / "again")   # content hashes: nothing to do
    assert (again.n_embedded, again.n_kept, again.catalog_hash) == (0, len(current), result.catalog_hash)


def test_refresh_refuses_bad_items(tiny_model_dir, tiny_synth, tmp_path) -> None:
    from ml.inference.catalog import refresh_catalog

    items = tiny_synth.dataset.items
    with pytest.raises(ValueError, match="items.csv: the items table has no column\\(s\\) genre"):
        refresh_catalog(tiny_model_dir, items.drop(columns=["genre"]), tmp_path / "a", source="items.csv")
    with pytest.raises(ValueError, match="item_id values repeat"):
        refresh_catalog(tiny_model_dir, pd.concat([items, items.head(2)]), tmp_path / "b")
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match="exists; a catalog refresh writes a new bundle folder"):
        refresh_catalog(tiny_model_dir, items, tmp_path / "c")

"""align_catalog (ml/evaluation/catalog.py): a bundle seen through an evaluation set's items.
Known items keep their exported rows; unknown ones get the item tower's output for their
content features and the OOV id row, computed here by hand from the tower's inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd


def test_known_items_keep_their_rows_and_new_ones_go_through_the_content_path(tiny_model_dir, tiny_synth) -> None:
    from ml.bundle.load import load_bundle
    from ml.evaluation.catalog import align_catalog

    bundle = load_bundle(tiny_model_dir)
    items = tiny_synth.dataset.items
    new = items.iloc[:3].assign(item_id=["new-a", "new-b", "new-c"], title=["x one", "y two", "z three"])
    kept = items.iloc[5:]                                         # the first five old items are gone
    catalog = pd.concat([new, kept]).reset_index(drop=True)
    view, alignment = align_catalog(bundle, catalog)
    assert (alignment.n_items, alignment.n_cold, alignment.n_dropped) == (len(catalog), 3, 5)
    assert view.item_ids == catalog["item_id"].astype(str).tolist()
    rows = [bundle.item_index[i] for i in kept["item_id"].astype(str)]
    np.testing.assert_array_equal(view.item_embeddings[3:], bundle.item_embeddings[rows])
    np.testing.assert_array_equal(view.id_tables.item[3:-1], bundle.id_tables.item[rows])

    # by hand: [content features ; OOV id vector] through the item tower
    tables = bundle.id_tables
    features = bundle.pipeline.item_matrix(new.reset_index(drop=True))
    x = np.concatenate([features, np.repeat(tables.item[-1:], 3, axis=0)], axis=1) if tables.dim else features
    expected = bundle.load_item_tower().predict(x.astype(np.float32), verbose=0)
    np.testing.assert_allclose(view.item_embeddings[:3], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(view.id_tables.item[:3], np.repeat(tables.item[-1:], 3, axis=0))
    assert view.item_popularity[:3].tolist() == [0, 0, 0]
    # the known users' seen items, renumbered: no row points past the new catalog or at a dropped item
    assert view.seen_items.max() < len(catalog) and len(view.seen_indptr) == len(bundle.seen_indptr)

    same, unchanged = align_catalog(bundle, items)
    assert same is bundle and (unchanged.n_cold, unchanged.n_dropped) == (0, 0)

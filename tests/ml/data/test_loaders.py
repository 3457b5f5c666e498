"""Folder loaders: write_folder -> load_folder gives equal frames for CSV, gzipped CSV and Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.data.loaders import load_dataset, load_folder, mask_dsn, write_folder
from ml.data.schema import Dataset
from ml.data.synthetic import generate_synthetic
from ml.data.validation import validate_dataset


@pytest.fixture(scope="module")
def synthetic() -> Dataset:
    return generate_synthetic(n_users=120, n_items=80, n_interactions=1500, seed=7).dataset


def awkward() -> Dataset:
    """Nulls, empty tags, leading-zero ids, sub-second timestamps, a rating column."""
    users = pd.DataFrame({"user_id": ["007", "8"], "country": ["DE", None], "age": [31.0, np.nan]})
    items = pd.DataFrame(
        {
            "item_id": ["001", "2"],
            "title": ["Ä title, with comma", None],
            "description": ['quotes "inside"\nand a newline', ""],
            "tags": [["x", "y z"], []],
            "genre": ["g", None],
            "maker": [None, "m"],
            "price": [0.1 + 0.2, np.nan],
            "duration_s": [1.0, 2.5],
            "released_at": [pd.Timestamp("2020-02-29"), pd.NaT],
        }
    )
    interactions = pd.DataFrame(
        {
            "user_id": ["007", "8", "007"],
            "item_id": ["2", "001", "001"],
            "rating": [0.75, 0.2, 0.5],
            "timestamp": pd.to_datetime(["2025-01-01T00:00:00.123456", "2025-01-02", "2025-01-03T05:06:07"], format="ISO8601"),
            "context": ["home", "search", None],
        }
    )
    return validate_dataset(users, items, interactions)


def assert_same(a: Dataset, b: Dataset) -> None:
    pd.testing.assert_frame_equal(a.users, b.users)
    pd.testing.assert_frame_equal(a.items, b.items)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "parquet"])
def test_round_trip_synthetic(tmp_path: Path, synthetic: Dataset, fmt: str) -> None:
    files = write_folder(synthetic, tmp_path, fmt=fmt)
    assert set(files) == {"users", "items", "interactions"}
    assert all(p.name.endswith(fmt) for p in files.values())
    loaded = load_folder(tmp_path)
    assert_same(synthetic, loaded)
    assert loaded.sources["items"] == str(files["items"])


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_round_trip_awkward_values(tmp_path: Path, fmt: str) -> None:
    ds = awkward()
    write_folder(ds, tmp_path, fmt=fmt)
    assert_same(ds, load_folder(tmp_path))


def test_csv_format_is_human_friendly(tmp_path: Path, synthetic: Dataset) -> None:
    write_folder(synthetic, tmp_path)
    raw_items = pd.read_csv(tmp_path / "items.csv", dtype=str)
    assert "|" in raw_items["tags"].iloc[0]
    raw_inter = pd.read_csv(tmp_path / "interactions.csv", dtype=str)
    assert "label" not in raw_inter.columns  # derived, recomputed on load
    assert {"decision", "rating"} <= set(raw_inter.columns)
    assert raw_inter["timestamp"].str.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$").all()


def test_label_kept_when_not_derivable(tmp_path: Path) -> None:
    ds = awkward()
    ds.interactions["decision"] = "like"  # now contradicts the label and the rating column...
    ds.interactions["rating"] = np.float32(0.9)
    files = write_folder(ds, tmp_path)
    assert "label" in pd.read_csv(files["interactions"]).columns  # ...so the label is kept


def test_switching_format_removes_stale_files(tmp_path: Path, synthetic: Dataset) -> None:
    write_folder(synthetic, tmp_path, fmt="parquet")
    write_folder(synthetic, tmp_path, fmt="csv")
    assert not list(tmp_path.glob("*.parquet"))
    assert_same(synthetic, load_folder(tmp_path))


def test_load_dataset_dispatches_folder(tmp_path: Path, synthetic: Dataset) -> None:
    write_folder(synthetic, tmp_path)
    assert_same(synthetic, load_dataset(str(tmp_path)))


def test_int_ids_in_parquet_match_string_ids(tmp_path: Path) -> None:
    ds = awkward()
    users = pd.DataFrame({"user_id": [1, 2]})
    items = ds.items.assign(item_id=[10, 20])
    inter = pd.DataFrame({"user_id": [1, 2], "item_id": [20, 10], "decision": ["like", "nope"],
                          "timestamp": [1_700_000_000, 1_700_000_100]})
    users.to_parquet(tmp_path / "users.parquet")
    items.to_parquet(tmp_path / "items.parquet")
    inter.to_csv(tmp_path / "interactions.csv", index=False)
    loaded = load_folder(tmp_path)
    assert loaded.interactions["item_id"].tolist() == ["20", "10"]
    assert loaded.items["tags"].tolist() == [["x", "y z"], []]


def test_unknown_format(tmp_path: Path, synthetic: Dataset) -> None:
    with pytest.raises(ValueError, match="unknown format"):
        write_folder(synthetic, tmp_path, fmt="xlsx")


def test_mask_dsn() -> None:
    assert mask_dsn("postgresql://bob:s3cret@db:5432/app") == "postgresql://bob:***@db:5432/app"
    assert "s3cret" not in mask_dsn("host=db password=s3cret dbname=app")
    assert "s3cret" not in mask_dsn("auth failed for pw s3cret", password="s3cret")


def test_load_items_reads_only_the_items_table(tmp_path: Path, synthetic: Dataset) -> None:
    """A catalog refresh reads the catalog: a folder whose interactions file is broken still gives its items."""
    from ml.data.loaders import load_items

    write_folder(synthetic, tmp_path / "data")
    (tmp_path / "data" / "interactions.csv").write_text("not,a\nvalid interactions table\n")
    (tmp_path / "data" / "users.csv").unlink()
    items = load_items(str(tmp_path / "data"))
    pd.testing.assert_frame_equal(items, load_folder_items(synthetic, tmp_path))


def load_folder_items(synthetic: Dataset, tmp_path: Path) -> pd.DataFrame:
    write_folder(synthetic, tmp_path / "full")
    return load_folder(tmp_path / "full").items


def test_load_items_names_file_column_and_rows_of_bad_items(tmp_path: Path, synthetic: Dataset) -> None:
    from ml.data.loaders import load_items
    from ml.data.validation import DataValidationError

    write_folder(synthetic, tmp_path / "data")
    items = pd.read_csv(tmp_path / "data" / "items.csv", dtype=str)
    items.loc[3, "price"] = "-4"
    items.to_csv(tmp_path / "data" / "items.csv", index=False)
    with pytest.raises(DataValidationError) as err:
        load_items(str(tmp_path / "data"))
    text = str(err.value)
    assert "items.csv" in text and "price" in text and "(rows 4)" in text  # file, column, data row from 1
    with pytest.raises(DataValidationError, match="no items file"):
        load_items(str(tmp_path / "missing"))

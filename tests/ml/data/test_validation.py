"""Every bad-input case gives a report naming the file, the column, example rows and a fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.data.loaders import load_folder
from ml.data.validation import DataValidationError, Problem, validate_dataset


def good_frames() -> dict[str, pd.DataFrame]:
    users = pd.DataFrame({"user_id": ["u1", "u2", "u3", "u4"], "age": [20, 30, 40, 50]})
    items = pd.DataFrame(
        {
            "item_id": ["i1", "i2", "i3", "i4"],
            "title": ["Alpha", "Beta", "Gamma", "Delta"],
            "description": ["a thing", "b thing", None, "d thing"],
            "tags": ["x|y", "y", "", "z|x|w"],
            "genre": ["g1", "g2", "g1", "g2"],
            "maker": ["m1", "m1", "m2", "m3"],
            "price": [1.5, 2.0, 0.0, 10.0],
            "duration_s": [60, 120, 30, 3600],
            "released_at": ["2020-01-01", "2021-06-30", None, "2024-12-31"],
        }
    )
    interactions = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u3", "u4", "u2"],
            "item_id": ["i1", "i2", "i3", "i4", "i1", "i2"],
            "decision": ["like", "nope", "Like", "NOPE", "yes", "no"],
            "timestamp": [
                "2025-01-01T10:00:00",
                "2025-01-01T11:00:00",
                "2025-01-02T09:30:00Z",
                "2025-01-03",
                "2025-01-04T00:00:00+02:00",
                "2025-01-05 12:00:00",
            ],
        }
    )
    return {"users": users, "items": items, "interactions": interactions}


def write(folder: Path, frames: dict[str, pd.DataFrame]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_csv(folder / f"{name}.csv", index=False)
    return folder


def load_error(tmp_path: Path, frames: dict[str, pd.DataFrame]) -> DataValidationError:
    folder = write(tmp_path / "data", frames)
    with pytest.raises(DataValidationError) as info:
        load_folder(folder)
    return info.value


def assert_reported(err: DataValidationError, file: str, column: str | None, rows: list[int] | None) -> Problem:
    text = str(err)
    assert file in text, text
    matching = [p for p in err.problems if p.source.endswith(file) and p.column == column]
    assert matching, f"no problem for {file} column {column}: {text}"
    problem = matching[0]
    if column:
        assert f"column '{column}'" in text
    if rows is not None:
        assert problem.example_rows == rows
        assert f"rows {', '.join(map(str, rows))}" in text
    assert problem.fix and problem.fix in text
    return problem


def test_good_data_loads(tmp_path: Path) -> None:
    folder = write(tmp_path / "data", good_frames())
    ds = load_folder(folder)
    assert ds.row_counts() == {"users": 4, "items": 4, "interactions": 6}
    assert ds.sources["items"] == str(folder / "items.csv")


def test_missing_required_column(tmp_path: Path) -> None:
    frames = good_frames()
    frames["items"] = frames["items"].drop(columns=["price"])
    err = load_error(tmp_path, frames)
    problem = assert_reported(err, "items.csv", "price", rows=None)
    assert "missing required column" in problem.message


def test_missing_decision_and_rating(tmp_path: Path) -> None:
    frames = good_frames()
    frames["interactions"] = frames["interactions"].drop(columns=["decision"])
    err = load_error(tmp_path, frames)
    problem = assert_reported(err, "interactions.csv", "decision", rows=None)
    assert "rating" in problem.message


def test_wrong_type_price(tmp_path: Path) -> None:
    frames = good_frames()
    frames["items"]["price"] = ["1.5", "abc", "2", "$3"]
    err = load_error(tmp_path, frames)
    problem = assert_reported(err, "items.csv", "price", rows=[2, 4])
    assert "not numbers" in problem.message and "'abc'" in problem.message


def test_negative_duration(tmp_path: Path) -> None:
    frames = good_frames()
    frames["items"]["duration_s"] = [60, 120, -5, 30]
    err = load_error(tmp_path, frames)
    problem = assert_reported(err, "items.csv", "duration_s", rows=[3])
    assert "negative" in problem.message


def test_duplicate_user_ids(tmp_path: Path) -> None:
    frames = good_frames()
    frames["users"]["user_id"] = ["u1", "u2", "u2", "u4"]
    frames["interactions"]["user_id"] = ["u1", "u1", "u2", "u2", "u4", "u2"]
    err = load_error(tmp_path, frames)
    problem = assert_reported(err, "users.csv", "user_id", rows=[2, 3])
    assert "more than once" in problem.message and "'u2'" in problem.message


def test_duplicate_item_ids(tmp_path: Path) -> None:
    frames = good_frames()
    frames["items"]["item_id"] = ["i1", "i2", "i3", "i1"]
    frames["interactions"]["item_id"] = ["i1", "i2", "i3", "i3", "i1", "i2"]
    err = load_error(tmp_path, frames)
    assert_reported(err, "items.csv", "item_id", rows=[1, 4])


def test_null_ids(tmp_path: Path) -> None:
    frames = good_frames()
    frames["items"]["item_id"] = ["i1", "i2", "i3", None]
    frames["interactions"]["item_id"] = ["i1", "i2", "i3", "i3", "i1", "i2"]
    err = load_error(tmp_path, frames)
    problem = assert_reported(err, "items.csv", "item_id", rows=[4])
    assert "empty item_id" in problem.message


def test_unknown_users(tmp_path: Path) -> None:
    frames = good_frames()
    frames["interactions"].loc[3, "user_id"] = "ghost"
    err = load_error(tmp_path, frames)
    problem = assert_reported(err, "interactions.csv", "user_id", rows=[4])
    assert "'ghost'" in problem.message and "users.csv" in problem.message


def test_unknown_items(tmp_path: Path) -> None:
    frames = good_frames()
    frames["interactions"].loc[[1, 5], "item_id"] = ["nope-item", "other"]
    err = load_error(tmp_path, frames)
    problem = assert_reported(err, "interactions.csv", "item_id", rows=[2, 6])
    assert "missing from the items table" in problem.message


def test_empty_table(tmp_path: Path) -> None:
    frames = good_frames()
    frames["interactions"] = frames["interactions"].iloc[0:0]
    err = load_error(tmp_path, frames)
    assert "interactions.csv" in str(err)
    problem = [p for p in err.problems if p.table == "interactions"][0]
    assert "no rows" in problem.message and problem.fix


def test_nan_rating(tmp_path: Path) -> None:
    frames = good_frames()
    inter = frames["interactions"].drop(columns=["decision"])
    inter["rating"] = [0.9, 0.1, np.nan, 0.5, np.nan, 0.0]
    frames["interactions"] = inter
    err = load_error(tmp_path, frames)
    problem = assert_reported(err, "interactions.csv", "rating", rows=[3, 5])
    assert "empty" in problem.message


def test_out_of_range_rating(tmp_path: Path) -> None:
    frames = good_frames()
    inter = frames["interactions"].drop(columns=["decision"])
    inter["rating"] = [0.9, 1.5, 0.2, -0.1, 1.0, 0.0]
    frames["interactions"] = inter
    err = load_error(tmp_path, frames)
    problem = assert_reported(err, "interactions.csv", "rating", rows=[2, 4])
    assert "outside [0.0, 1.0]" in problem.message


def test_unparseable_timestamp(tmp_path: Path) -> None:
    frames = good_frames()
    frames["interactions"].loc[4, "timestamp"] = "last tuesday"
    err = load_error(tmp_path, frames)
    problem = assert_reported(err, "interactions.csv", "timestamp", rows=[5])
    assert "'last tuesday'" in problem.message


def test_unparseable_release_date(tmp_path: Path) -> None:
    frames = good_frames()
    frames["items"]["released_at"] = ["2020-01-01", "2021-13-45", None, "soon"]
    err = load_error(tmp_path, frames)
    assert_reported(err, "items.csv", "released_at", rows=[2, 4])


def test_bad_decision_value(tmp_path: Path) -> None:
    frames = good_frames()
    frames["interactions"]["decision"] = ["maybe", "nope", "like", "superlike", "like", "nope"]
    err = load_error(tmp_path, frames)
    problem = assert_reported(err, "interactions.csv", "decision", rows=[1, 4])
    assert "'maybe'" in problem.message and "like" in problem.fix


def test_missing_file(tmp_path: Path) -> None:
    frames = good_frames()
    del frames["users"]
    folder = write(tmp_path / "data", frames)
    with pytest.raises(DataValidationError) as info:
        load_folder(folder)
    text = str(info.value)
    assert str(folder) in text and "users.csv" in text and "users.parquet" in text
    assert len(info.value.problems) == 1


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="does not exist"):
        load_folder(tmp_path / "nowhere")


def test_several_problems_reported_together(tmp_path: Path) -> None:
    frames = good_frames()
    frames["items"]["price"] = ["1", "x", "2", "3"]
    frames["users"]["user_id"] = ["u1", "u1", "u3", "u4"]
    frames["interactions"]["user_id"] = ["u1", "u1", "u1", "u3", "u4", "u1"]
    frames["interactions"].loc[0, "timestamp"] = "garbage"
    err = load_error(tmp_path, frames)
    text = str(err)
    assert text.splitlines()[0] == "3 problems in the input data:"
    assert len(err.problems) == 3
    for name in ("items.csv", "users.csv", "interactions.csv"):
        assert name in text
    assert isinstance(err, ValueError)


def test_single_problem_grammar() -> None:
    err = DataValidationError([Problem("users", "u.csv", "user_id", "bad", [1], "fix it")])
    assert str(err).splitlines()[0] == "1 problem in the input data:"


def test_example_rows_capped_at_five() -> None:
    frames = good_frames()
    inter = pd.concat([frames["interactions"]] * 3, ignore_index=True)
    inter["decision"] = "??"
    with pytest.raises(DataValidationError) as info:
        validate_dataset(frames["users"], frames["items"], inter)
    assert info.value.problems[0].example_rows == [1, 2, 3, 4, 5]


# --------------------------------------------------------------------------- normalisation


def test_normalises_tags_labels_and_text() -> None:
    frames = good_frames()
    items = frames["items"].copy()
    items["tags"] = pd.Series(["a| b |", ["c", None, "d"], np.array(["e"]), None], dtype=object)
    items.loc[1, "title"] = np.nan
    ds = validate_dataset(frames["users"], items, frames["interactions"])
    assert ds.items["tags"].tolist() == [["a", "b"], ["c", "d"], ["e"], []]
    assert ds.items["title"].tolist()[1] == ""
    assert ds.items["description"].tolist()[2] == ""
    assert ds.items["released_at"].dtype == "datetime64[ns]"
    assert pd.isna(ds.items["released_at"].iloc[2])
    inter = ds.interactions
    assert inter["label"].dtype == np.int8 and inter["rating"].dtype == np.float32
    by_key = {(u, i): lab for u, i, lab in inter[["user_id", "item_id", "label"]].itertuples(index=False)}
    assert by_key == {("u1", "i1"): 1, ("u1", "i2"): 0, ("u2", "i3"): 1, ("u3", "i4"): 0, ("u4", "i1"): 1, ("u2", "i2"): 0}
    assert (inter["rating"] == inter["label"].astype(np.float32)).all()
    assert inter["timestamp"].is_monotonic_increasing
    assert list(inter.index) == list(range(len(inter)))


def test_timezones_become_naive_utc() -> None:
    frames = good_frames()
    ds = validate_dataset(frames["users"], frames["items"], frames["interactions"])
    ts = dict(zip(zip(ds.interactions["user_id"], ds.interactions["item_id"]), ds.interactions["timestamp"]))
    assert ts[("u4", "i1")] == pd.Timestamp("2025-01-03T22:00:00")
    assert ts[("u2", "i3")] == pd.Timestamp("2025-01-02T09:30:00")
    aware = frames["interactions"].copy()
    aware["timestamp"] = pd.to_datetime(["2025-01-01T12:00:00"] * 6).tz_localize("Europe/Berlin")
    ds2 = validate_dataset(frames["users"], frames["items"], aware)
    assert ds2.interactions["timestamp"].dt.tz is None
    assert (ds2.interactions["timestamp"] == pd.Timestamp("2025-01-01T11:00:00")).all()


def test_labels_from_rating_and_epoch_timestamps() -> None:
    frames = good_frames()
    inter = frames["interactions"].drop(columns=["decision"])
    inter["rating"] = [0.9, 0.1, 0.5, 0.49, 1.0, 0.0]
    inter["timestamp"] = [1_735_689_600 + 60 * k for k in range(6)]  # 2025-01-01T00:00:00Z + k minutes
    ds = validate_dataset(frames["users"], frames["items"], inter)
    assert ds.interactions["label"].tolist() == [1, 0, 1, 0, 1, 0]
    assert ds.interactions["rating"].tolist() == pytest.approx([0.9, 0.1, 0.5, 0.49, 1.0, 0.0])
    assert ds.interactions["timestamp"].iloc[0] == pd.Timestamp("2025-01-01T00:00:00")
    assert ds.interactions["timestamp"].iloc[5] == pd.Timestamp("2025-01-01T00:05:00")
    assert "decision" not in ds.interactions.columns


def test_int_ids_become_strings_and_match() -> None:
    users = pd.DataFrame({"user_id": [1, 2, 3]})
    items = good_frames()["items"].assign(item_id=[10, 20, 30, 40])
    inter = pd.DataFrame(
        {
            "user_id": ["1", "2", "3"],  # strings (CSV) against int ids (Postgres)
            "item_id": [10.0, 20.0, 40.0],  # floats from a column that had NaN once
            "decision": [True, False, 1],
            "timestamp": pd.to_datetime(["2025-01-01", "2025-01-02", "2025-01-03"]),
        }
    )
    ds = validate_dataset(users, items, inter)
    assert ds.users["user_id"].tolist() == ["1", "2", "3"]
    assert ds.items["item_id"].tolist() == ["10", "20", "30", "40"]
    assert ds.interactions["item_id"].tolist() == ["10", "20", "40"]
    assert ds.interactions["label"].tolist() == [1, 0, 1]


def test_inputs_untouched() -> None:
    frames = good_frames()
    before = {k: v.copy() for k, v in frames.items()}
    validate_dataset(frames["users"], frames["items"], frames["interactions"])
    for name, frame in frames.items():
        pd.testing.assert_frame_equal(frame, before[name])


def test_decision_with_partial_rating() -> None:
    frames = good_frames()
    inter = frames["interactions"].copy()
    inter["decision"] = ["like", None, "nope", None, "like", "nope"]
    inter["rating"] = [np.nan, 0.8, np.nan, 0.2, 0.3, np.nan]
    ds = validate_dataset(frames["users"], frames["items"], inter)
    by_key = {(u, i): (lab, r) for u, i, lab, r in ds.interactions[["user_id", "item_id", "label", "rating"]].itertuples(index=False)}
    assert by_key[("u1", "i2")][0] == 1  # from rating 0.8
    assert by_key[("u4", "i1")] == (1, pytest.approx(0.3))  # decision wins over rating
    assert by_key[("u1", "i1")] == (1, 1.0)  # missing rating filled from decision


# --------------------------------------------------------------------------- files that are not tables


def _folder_with(tmp_path: Path, table: str, text: str) -> Path:
    folder = write(tmp_path / "data", good_frames())
    (folder / f"{table}.csv").write_text(text, encoding="utf-8")
    return folder


def _only_problem(folder: Path, table: str) -> Problem:
    with pytest.raises(DataValidationError) as info:
        load_folder(folder)
    assert [p.table for p in info.value.problems] == [table], str(info.value)
    problem = info.value.problems[0]
    assert problem.source.endswith(f"{table}.csv") and problem.fix and problem.fix in str(info.value)
    return problem


def test_empty_interactions_file(tmp_path: Path) -> None:
    problem = _only_problem(_folder_with(tmp_path, "interactions", ""), "interactions")
    assert "the file is empty" in problem.message and "header row" in problem.fix


def test_header_only_interactions_file(tmp_path: Path) -> None:
    folder = _folder_with(tmp_path, "interactions", "user_id,item_id,decision,timestamp\n")
    problem = _only_problem(folder, "interactions")
    assert "no rows" in problem.message and "user_id, item_id, decision, timestamp" in problem.message
    assert "under the header" in problem.fix


def test_empty_items_file(tmp_path: Path) -> None:
    problem = _only_problem(_folder_with(tmp_path, "items", ""), "items")
    assert "the file is empty" in problem.message


def test_header_only_items_file(tmp_path: Path) -> None:
    header = ",".join(good_frames()["items"].columns)
    problem = _only_problem(_folder_with(tmp_path, "items", header + "\n"), "items")  # was a numpy casting error
    assert "items table has no rows" in problem.message and "price" in problem.message


def test_semicolon_separated_file(tmp_path: Path) -> None:
    folder = write(tmp_path / "data", good_frames())
    good_frames()["interactions"].to_csv(folder / "interactions.csv", sep=";", index=False)
    problem = _only_problem(folder, "interactions")   # one problem, not one per "missing" column
    assert "separated by semicolons (';'), not commas" in problem.message
    assert "sep=';'" in problem.fix


def test_tab_separated_file(tmp_path: Path) -> None:
    folder = write(tmp_path / "data", good_frames())
    good_frames()["items"].to_csv(folder / "items.csv", sep="\t", index=False)
    assert "separated by tabs" in _only_problem(folder, "items").message


def test_single_column_users_file_is_not_mistaken_for_a_delimiter_problem(tmp_path: Path) -> None:
    frames = good_frames()
    frames["users"] = frames["users"][["user_id"]]
    assert load_folder(write(tmp_path / "data", frames)).row_counts()["users"] == 4

"""Ratings as people have them: 0-1 scores, 1-5 and 1-10 stars, configured scales and thresholds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.data.loaders import load_folder, write_folder
from ml.data.ratings import apply_rating_config, infer_rating_scale, parse_rating_scale
from ml.data.validation import DataValidationError, validate_dataset

USERS = pd.DataFrame({"user_id": ["u1", "u2", "u3"]})
ITEMS = pd.DataFrame({"item_id": ["i1", "i2", "i3"], "title": ["A", "B", "C"], "description": ["", "", ""],
                      "tags": ["", "", ""], "genre": ["g", "g", "h"], "maker": ["m", "m", "n"],
                      "price": [1.0, 2.0, 3.0], "duration_s": [60, 60, 60], "released_at": [None, None, None]})


def stars(values: list[float], decisions: list[str | None] | None = None) -> pd.DataFrame:
    n = len(values)
    frame = pd.DataFrame({"user_id": [f"u{1 + k % 3}" for k in range(n)], "item_id": [f"i{1 + (k // 3) % 3}" for k in range(n)],
                          "rating": values, "timestamp": [f"2025-01-0{1 + k}" for k in range(n)]})
    if decisions is not None:
        frame["decision"] = decisions
    return frame


def labels(values: list[float], **config) -> list[int]:
    return validate_dataset(USERS, ITEMS, stars(values), **config).interactions["label"].tolist()


def test_five_stars_inferred_four_and_up_is_a_like() -> None:
    ds = validate_dataset(USERS, ITEMS, stars([5, 2, 4, 3, 1, 4.5]))
    assert ds.interactions["label"].tolist() == [1, 0, 1, 0, 0, 1]
    assert ds.interactions["rating"].tolist() == [5, 2, 4, 3, 1, 4.5]   # stars kept as given
    assert (ds.ratings.scale.name, ds.ratings.scale.like_threshold, ds.ratings.scale.inferred) == ("1-5", 4.0, True)
    assert "1-5 stars (inferred from the ratings); a like is rating >= 4" in ds.ratings.scale.describe()


def test_ten_stars_inferred_eight_and_up_is_a_like() -> None:
    assert labels([10, 7, 8, 2, 9, 7.5]) == [1, 0, 1, 0, 1, 0]


def test_zero_one_scores_keep_the_half_threshold() -> None:
    assert labels([0.9, 0.1, 0.5, 0.49, 1.0, 0.0]) == [1, 0, 1, 0, 1, 0]
    assert infer_rating_scale(np.array([0.0, 1.0])).name == "0-1"


def test_configured_scale_and_threshold() -> None:
    assert labels([5, 2, 4, 3, 1, 3], rating_scale="1-5", like_threshold=3) == [1, 0, 1, 1, 0, 1]
    assert labels([5, 2, 4, 3, 1, 3], like_threshold=3) == [1, 0, 1, 1, 0, 1]      # inferred scale, own threshold
    assert labels([90, 10, 80, 79, 0, 100], rating_scale=[0, 100]) == [1, 0, 1, 0, 0, 1]  # default 0.8 x 100


def test_ratings_that_fit_no_scale_name_what_is_needed() -> None:
    with pytest.raises(DataValidationError) as info:
        validate_dataset(USERS, ITEMS, stars([90, 10, 80, 79, 0, 100]))
    text = str(info.value)
    assert "span 0..100" in text and "fits none of the scales" in text and "data.rating_scale" in text


def test_ratings_outside_the_configured_scale() -> None:
    with pytest.raises(DataValidationError) as info:
        validate_dataset(USERS, ITEMS, stars([5, 2, 7, 3, 1, 4]), rating_scale="1-5")
    problem = info.value.problems[0]
    assert problem.column == "rating" and problem.example_rows == [3]
    assert "configured rating scale 1-5 stars" in problem.message and "data.rating_scale" in problem.fix


def test_bad_like_threshold_and_scale_spec() -> None:
    with pytest.raises(DataValidationError, match="like_threshold=9.*1-5 stars"):
        validate_dataset(USERS, ITEMS, stars([5, 2, 4, 3, 1, 4]), like_threshold=9)
    with pytest.raises(ValueError, match="rating_scale='1-7' is unknown"):
        parse_rating_scale("1-7")


def test_decision_wins_and_only_rated_rows_are_relabelled() -> None:
    ds = validate_dataset(USERS, ITEMS, stars([5, 2, 4, 3, 1, 3], ["nope", None, None, None, "like", None]))
    assert ds.interactions["label"].tolist() == [0, 0, 1, 0, 1, 0]
    relaxed = apply_rating_config(ds, "1-5", 3)
    assert relaxed.interactions["label"].tolist() == [0, 0, 1, 1, 1, 1]   # rows 1 and 5 keep their decisions
    assert apply_rating_config(ds, "auto", None) is ds
    with pytest.raises(ValueError, match="outside the configured rating scale 0-1"):
        apply_rating_config(ds, "0-1")


def test_star_data_round_trips_through_a_folder(tmp_path: Path) -> None:
    ds = validate_dataset(USERS, ITEMS, stars([5, 2, 4, 3, 1, 4.5]))
    write_folder(ds, tmp_path / "stars")
    back = load_folder(tmp_path / "stars")
    pd.testing.assert_frame_equal(back.interactions, ds.interactions)
    assert back.ratings.scale == ds.ratings.scale


@pytest.mark.slow  # trains a (tiny) model
def test_star_data_trains_with_the_right_like_labels(tmp_path: Path) -> None:
    """1-5 stars through the trainer: likes are 4 stars and up by default, 3 and up with data.like_threshold=3."""
    from ml.data.synthetic import generate_synthetic
    from ml.training.trainer import create_standard_trainer

    synth = generate_synthetic(n_users=60, n_items=40, n_interactions=900, seed=5)
    inter = synth.dataset.interactions.drop(columns=["decision", "label", "rating"])
    stars_given = np.random.default_rng(0).integers(1, 6, size=len(inter))
    inter["rating"] = stars_given
    folder = tmp_path / "stars"
    write_folder(validate_dataset(synth.dataset.users, synth.dataset.items, inter), folder)
    dataset = load_folder(folder)
    by_pair = dict(zip(zip(inter["user_id"], inter["item_id"]), stars_given))
    given = np.array([by_pair[p] for p in zip(dataset.interactions["user_id"], dataset.interactions["item_id"])])
    config = {"model": {"user_embedding_dim": 8, "item_embedding_dim": 8, "hidden_units": [16]},
              "training": {"epochs": 1, "batch_size": 64}, "features": {"text_dim": 4}}
    trainer = create_standard_trainer(tmp_path / "model", {**config, "data": {"rating_scale": "1-5"}})
    trainer.train(dataset=dataset)
    np.testing.assert_array_equal(trainer.prepared.labels, (given >= 4).astype(np.int64))
    relaxed = create_standard_trainer(tmp_path / "relaxed", {**config, "data": {"like_threshold": 3}})
    np.testing.assert_array_equal(relaxed.prepare(dataset).labels, (given >= 3).astype(np.int64))

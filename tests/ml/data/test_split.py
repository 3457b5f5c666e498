"""The three-part time split per user: disjoint, complete, time ordered, shares by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.data.split import time_split_per_user


def _frame() -> pd.DataFrame:
    # user a: 10 rows on days 10, 9, ..., 1 (newest first); b: 3 rows; c: 1 row
    return pd.DataFrame({
        "user_id": ["a"] * 10 + ["b"] * 3 + ["c"],
        "timestamp": pd.to_datetime([f"2024-01-{d:02d}" for d in range(10, 0, -1)]
                                    + ["2024-01-02", "2024-01-03", "2024-01-01", "2024-01-05"]),
    })


def test_shares_by_hand() -> None:
    split = time_split_per_user(_frame(), 0.2, 0.1)
    # a: floor(10*.1)=1 test (day 10, row 0), floor(10*.2)=2 valid (days 9, 8: rows 1, 2), 7 train
    assert np.flatnonzero(split.test).tolist() == [0]
    assert np.flatnonzero(split.valid).tolist() == [1, 2]
    # b (3 rows): floor(.3)=0 test, floor(.6)=0 valid; c (1 row): train
    assert split.train.tolist() == [False] * 3 + [True] * 7 + [True] * 3 + [True]


def test_parts_are_disjoint_complete_and_time_ordered(tiny_synth) -> None:
    inter = tiny_synth.dataset.interactions
    split = time_split_per_user(inter, 0.2, 0.1)
    stacked = np.stack([split.train, split.valid, split.test]).astype(int)
    assert (stacked.sum(axis=0) == 1).all()                      # every row in exactly one part
    assert split.test.sum() > 300 and split.valid.sum() > 600
    ts = inter["timestamp"]
    per_part = [inter.assign(t=ts)[m].groupby("user_id")["t"] for m in (split.train, split.valid, split.test)]
    joined = pd.concat([per_part[0].max(), per_part[1].min(), per_part[1].max(), per_part[2].min()], axis=1,
                       keys=["train_last", "valid_first", "valid_last", "test_first"]).dropna()
    assert len(joined) > 100
    assert (joined["train_last"] <= joined["valid_first"]).all()
    assert (joined["valid_last"] <= joined["test_first"]).all()


def test_without_test_share_it_is_the_old_two_way_split() -> None:
    two = time_split_per_user(_frame(), 0.2)
    assert not two.test.any() and np.flatnonzero(two.valid).tolist() == [0, 1]


@pytest.mark.parametrize("v, t, message", [
    (0.5, 0.5, r"validation_split=0.5 \+ training.test_split=0.5 leave nothing to train on"),
    (-0.1, 0.1, r"training.validation_split=-0.1 must be a share in \[0, 1\)"),
    (0.2, 1.0, r"training.test_split=1.0 must be a share in \[0, 1\)"),
])
def test_bad_shares_are_named(v, t, message) -> None:
    with pytest.raises(ValueError, match=message):
        time_split_per_user(_frame(), v, t)

"""The per-user time split in three parts: train, validation, test.

Each user's interactions are ordered by time; the newest `test_split` share is the test
part (offline evaluation and the promotion gate), the `validation_split` share just before
it is the validation part (early stopping, tuning, checkpoint choice), the rest is train.
Nothing a user did later is used to predict what they did earlier, and nothing selects on
the test part, so the figures reported on it are not tuned to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class TimeSplit:
    """Boolean row masks over the interactions; each row is in exactly one part."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def _share(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"training.{name}={value} must be a share in [0, 1), e.g. {0.2 if name[0] == 'v' else 0.1}")
    return value


def time_split_per_user(interactions: pd.DataFrame, validation_split: float, test_split: float = 0.0) -> TimeSplit:
    """Hold out each user's newest `test_split` share as test and the `validation_split` share before it as validation.

    Per user with n interactions: floor(n * test_split) newest rows are test, the
    floor(n * validation_split) rows before them validation, the rest train (ties in time
    keep the table's order). A user with too few interactions for a part keeps them in the
    earlier parts, so short histories still train.
    """
    v, t = _share("validation_split", validation_split), _share("test_split", test_split)
    if v + t >= 1.0:
        raise ValueError(f"training.validation_split={v} + training.test_split={t} leave nothing to train on: "
                         "keep their sum below 1 (defaults 0.2 and 0.1)")
    n = len(interactions)
    none = np.zeros(n, dtype=bool)
    if n == 0 or (v == 0 and t == 0):
        return TimeSplit(~none, none.copy(), none.copy())
    order = np.lexsort((np.arange(n), interactions["timestamp"].to_numpy(), interactions["user_id"].to_numpy()))
    users_sorted = interactions["user_id"].to_numpy()[order]
    # position of each row within its user's time-ordered history
    starts = np.r_[0, np.flatnonzero(users_sorted[1:] != users_sorted[:-1]) + 1]
    lengths = np.diff(np.r_[starts, n])
    pos = np.arange(n) - np.repeat(starts, lengths)
    size = np.repeat(lengths, lengths)
    n_test = np.floor(size * t + 1e-9).astype(int)  # + 1e-9: 100 * 0.29 is 28.999... in floating point
    n_val = np.floor(size * v + 1e-9).astype(int)
    part_sorted = np.zeros(n, dtype=np.int8)                  # 0 train, 1 valid, 2 test
    part_sorted[pos >= size - n_test - n_val] = 1
    part_sorted[pos >= size - n_test] = 2
    part = np.empty(n, dtype=np.int8)
    part[order] = part_sorted
    return TimeSplit(part == 0, part == 1, part == 2)

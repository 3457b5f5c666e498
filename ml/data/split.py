"""The per-user time split: each user's newest swipes are held out, nothing from the future leaks into training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    pass

@dataclass
class TimeSplit:
    """Row masks over `dataset.interactions`: each user's last interactions are validation."""

    train: np.ndarray
    valid: np.ndarray


def time_split_per_user(interactions: pd.DataFrame, validation_split: float) -> TimeSplit:
    """Hold out the latest `validation_split` share of each user's interactions.

    Splitting per user by time means nothing a user did later is used to predict what
    they did earlier; users with too few interactions stay wholly in training.
    """
    n = len(interactions)
    if validation_split <= 0 or n == 0:
        return TimeSplit(np.ones(n, dtype=bool), np.zeros(n, dtype=bool))
    order = np.lexsort((np.arange(n), interactions["timestamp"].to_numpy(), interactions["user_id"].to_numpy()))
    users_sorted = interactions["user_id"].to_numpy()[order]
    # position of each row within its user's time-ordered history
    starts = np.r_[0, np.flatnonzero(users_sorted[1:] != users_sorted[:-1]) + 1]
    lengths = np.diff(np.r_[starts, n])
    pos = np.arange(n) - np.repeat(starts, lengths)
    size = np.repeat(lengths, lengths)
    n_val = np.floor(size * validation_split).astype(int)
    is_val_sorted = pos >= size - n_val
    valid = np.zeros(n, dtype=bool)
    valid[order] = is_val_sorted
    return TimeSplit(~valid, valid)

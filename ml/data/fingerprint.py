"""Data fingerprint: a content hash and row counts, logged with every training run
so a model can be traced to the exact data it saw."""

from __future__ import annotations

import hashlib
from typing import Any

import pandas as pd

from ml.data.schema import Dataset


def _frame_hash(frame: pd.DataFrame) -> str:
    h = hashlib.sha256()
    h.update(",".join(map(str, frame.columns)).encode())
    normalised = frame.copy()
    for col in normalised.columns:
        if normalised[col].dtype == object and normalised[col].map(lambda v: isinstance(v, (list, tuple))).any():
            normalised[col] = normalised[col].map(lambda v: "|".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
    h.update(pd.util.hash_pandas_object(normalised, index=False).to_numpy().tobytes())
    return h.hexdigest()


def dataset_fingerprint(dataset: Dataset) -> dict[str, Any]:
    """`{"hash": sha256 over the three tables, "rows": {...}, "tables": {name: sha256}}`."""
    tables = {
        "users": _frame_hash(dataset.users),
        "items": _frame_hash(dataset.items),
        "interactions": _frame_hash(dataset.interactions),
    }
    combined = hashlib.sha256("".join(tables[k] for k in sorted(tables)).encode()).hexdigest()
    return {"hash": combined, "rows": dataset.row_counts(), "tables": tables}

"""Check the three raw input tables against `ml.data.schema` and normalise them.

Every loader (CSV/Parquet folder, PostgreSQL, synthetic generator) hands raw frames
to `validate_dataset`. It collects *all* problems before raising, so a user fixing
a broken export sees the whole list at once (file, column, example rows, fix)
instead of one error per run. On success it returns a `Dataset` whose dtypes are
the same whatever the source was: string ids, list tags, tz-naive UTC timestamps,
an int8 `label` and a float32 `rating` on interactions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ml.data.schema import (
    INTERACTIONS_COLUMNS,
    ITEMS_COLUMNS,
    LIKE_THRESHOLD,
    LIKE_VALUES,
    NOPE_VALUES,
    RATING_RANGE,
    TAG_SEPARATOR,
    USERS_COLUMNS,
    Dataset,
)
from ml.logs import get_logger

log = get_logger("training")

MAX_EXAMPLE_ROWS = 5
# Epoch seconds outside this window do not fit datetime64[ns] (years 1677..2262).
_EPOCH_LIMIT_S = 9.2e9


@dataclass
class Problem:
    """One thing wrong with the input data, phrased so a person can fix it."""

    table: str
    source: str
    column: str | None
    message: str
    example_rows: list[int] = field(default_factory=list)
    fix: str = ""

    def describe(self) -> str:
        where = f"[{self.source}]"
        if self.column:
            where += f" column '{self.column}'"
        text = f"{where}: {self.message}"
        if self.example_rows:
            text += f" (rows {', '.join(str(r) for r in self.example_rows)})"
        if self.fix:
            text += f"\n   fix: {self.fix}"
        return text


class DataValidationError(ValueError):
    """Raised with every problem found in the input data, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__(self._report())

    def _report(self) -> str:
        n = len(self.problems)
        lines = [f"{n} problem{'s' if n != 1 else ''} in the input data:"]
        for i, problem in enumerate(self.problems, 1):
            lines.append(f"{i}. {problem.describe()}")
        lines.append("(row numbers count data rows from 1, header not counted)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._report()


# --------------------------------------------------------------------------- helpers


def _rows(mask: Iterable[bool] | np.ndarray | pd.Series) -> list[int]:
    """1-based positions of the first few True entries."""
    arr = np.asarray(mask, dtype=bool)
    return [int(i) + 1 for i in np.flatnonzero(arr)[:MAX_EXAMPLE_ROWS]]


def _examples(values: pd.Series, mask: np.ndarray, n: int = 3) -> str:
    picked = values[np.asarray(mask, dtype=bool)].head(n).tolist()
    return ", ".join(repr(v) for v in picked)


def _is_null_scalar(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:
        return bool(pd.isna(value)) if np.ndim(value) == 0 else False
    except (TypeError, ValueError):
        return False


def _id_strings(series: pd.Series) -> pd.Series:
    """Ids as stripped strings (None where missing) so CSV and Postgres ids compare equal."""
    s = series
    if pd.api.types.is_float_dtype(s.dtype):
        finite = s.dropna()
        if len(finite) and np.all(np.mod(finite.to_numpy(), 1) == 0):
            s = s.astype("Int64")
    if pd.api.types.is_bool_dtype(s.dtype):
        s = s.astype(object)
    null = s.isna().to_numpy()
    out = s.astype(object).where(~null, None)
    out = out.map(lambda v: None if v is None else _scalar_id(v))
    out = out.where(out.map(lambda v: v is not None and v != ""), None)
    return out.astype(object)


def _scalar_id(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _parse_datetimes(series: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Parse ISO strings, datetimes (tz-aware -> UTC) or epoch seconds.

    Returns (datetime64[ns] tz-naive UTC series, mask of non-null values that failed).
    """
    s = series.reset_index(drop=True)
    null = s.isna().to_numpy()
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        parsed = s.dt.tz_convert("UTC").dt.tz_localize(None)
        return parsed.astype("datetime64[ns]"), np.zeros(len(s), dtype=bool)
    if pd.api.types.is_datetime64_dtype(s.dtype):
        return s.astype("datetime64[ns]"), np.zeros(len(s), dtype=bool)

    result = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns]")
    if pd.api.types.is_bool_dtype(s.dtype):
        return result, ~null
    if pd.api.types.is_numeric_dtype(s.dtype):
        numeric = s.astype("float64")
        epoch_mask = ~null
    else:
        numeric = pd.to_numeric(s, errors="coerce")
        is_bool = s.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy()
        epoch_mask = numeric.notna().to_numpy() & ~is_bool
    num = numeric.to_numpy(dtype="float64", na_value=np.nan)
    ok_epoch = epoch_mask & np.isfinite(num) & (np.abs(np.nan_to_num(num)) < _EPOCH_LIMIT_S)
    if ok_epoch.any():
        result[ok_epoch] = pd.to_datetime(num[ok_epoch], unit="s").astype("datetime64[ns]")
    bad = epoch_mask & ~ok_epoch

    text_mask = ~null & ~epoch_mask
    if text_mask.any():
        raw = s[text_mask]
        try:
            parsed = pd.to_datetime(raw, errors="coerce", utc=True, format="mixed")
        except (TypeError, ValueError, OverflowError):
            parsed = pd.Series(
                [_parse_one(v) for v in raw], index=raw.index, dtype="datetime64[ns, UTC]"
            )
        words = raw.map(lambda v: isinstance(v, str) and v.strip().lower() in {"now", "today", "tomorrow", "yesterday"})
        parsed = parsed.where(~words.to_numpy(), pd.NaT)
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]")
        result[text_mask] = parsed.to_numpy()
        bad = bad | (text_mask & result.isna().to_numpy())
    return result, bad


def _parse_one(value: Any) -> pd.Timestamp:
    try:
        return pd.to_datetime(value, utc=True)
    except (TypeError, ValueError, OverflowError):
        return pd.NaT


def _parse_tags(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [t.strip() for t in value.split(TAG_SEPARATOR) if t.strip()]
    if isinstance(value, (list, tuple, np.ndarray, pd.Series)):
        return [str(t).strip() for t in value if not _is_null_scalar(t) and str(t).strip()]
    if _is_null_scalar(value):
        return []
    return [t.strip() for t in str(value).split(TAG_SEPARATOR) if t.strip()]


def _decision_text(series: pd.Series) -> pd.Series:
    """Lower-cased decision strings (None where missing); 1.0 reads as '1'."""

    def one(v: Any) -> str | None:
        if _is_null_scalar(v):
            return None
        if isinstance(v, (bool, np.bool_)):
            return "true" if v else "false"
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            return str(int(v))
        return str(v).strip().lower()

    return series.map(one).astype(object)


class _Checker:
    def __init__(self, sources: dict[str, str]):
        self.sources = sources
        self.problems: list[Problem] = []

    def add(self, table: str, column: str | None, message: str, rows: list[int] | None = None, fix: str = "") -> None:
        self.problems.append(
            Problem(
                table=table,
                source=self.sources.get(table, table),
                column=column,
                message=message,
                example_rows=list(rows or [])[:MAX_EXAMPLE_ROWS],
                fix=fix,
            )
        )

    def required_columns(self, table: str, frame: pd.DataFrame, names: list[str]) -> bool:
        missing = [c for c in names if c not in frame.columns]
        for col in missing:
            self.add(
                table,
                col,
                f"missing required column '{col}' (found: {', '.join(map(str, frame.columns)) or 'no columns'})",
                fix=f"add a '{col}' column to the {table} table (see ml/data/schema.py)",
            )
        return not missing

    def not_empty(self, table: str, frame: pd.DataFrame) -> bool:
        if len(frame) == 0:
            self.add(table, None, f"the {table} table has no rows", fix=f"export at least one {table} row")
            return False
        return True

    def ids(self, table: str, frame: pd.DataFrame, column: str, unique: bool) -> pd.Series | None:
        if column not in frame.columns:
            return None
        ids = _id_strings(frame[column].reset_index(drop=True))
        null = ids.isna().to_numpy()
        if null.any():
            self.add(
                table,
                column,
                f"{int(null.sum())} rows have an empty {column}",
                _rows(null),
                fix=f"every {table} row needs a {column}; drop or fill those rows",
            )
        if unique:
            dup = ids.duplicated(keep=False).to_numpy() & ~null
            if dup.any():
                n_ids = ids[dup].nunique()
                self.add(
                    table,
                    column,
                    f"{n_ids} {column} values appear more than once, e.g. "
                    f"{', '.join(repr(v) for v in ids[dup].drop_duplicates().head(3))}",
                    _rows(dup),
                    fix=f"{column} must be unique: remove duplicate rows or merge them",
                )
        return ids

    def numeric(self, table: str, frame: pd.DataFrame, column: str, non_negative: bool) -> pd.Series | None:
        if column not in frame.columns:
            return None
        raw = frame[column].reset_index(drop=True)
        if pd.api.types.is_bool_dtype(raw.dtype):
            raw = raw.astype(object)
        values = pd.to_numeric(raw, errors="coerce").astype("float64")
        null_raw = raw.isna().to_numpy()
        bad = ~null_raw & values.isna().to_numpy()
        if pd.api.types.is_object_dtype(raw.dtype):
            bad |= raw.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy()
        if bad.any():
            self.add(
                table,
                column,
                f"{int(bad.sum())} values are not numbers, e.g. {_examples(raw, bad)}",
                _rows(bad),
                fix=f"write {column} as a plain number (e.g. 9.99), without units or currency signs; leave it empty if unknown",
            )
        if non_negative:
            neg = (values < 0).to_numpy()
            if neg.any():
                self.add(
                    table,
                    column,
                    f"{int(neg.sum())} values are negative, e.g. {_examples(raw, neg)}",
                    _rows(neg),
                    fix=f"{column} must be >= 0",
                )
        return values

    def datetimes(self, table: str, frame: pd.DataFrame, column: str, nullable: bool) -> pd.Series | None:
        if column not in frame.columns:
            return None
        raw = frame[column].reset_index(drop=True)
        parsed, bad = _parse_datetimes(raw)
        if bad.any():
            self.add(
                table,
                column,
                f"{int(bad.sum())} values are not valid timestamps, e.g. {_examples(raw, bad)}",
                _rows(bad),
                fix="use ISO 8601 (2025-01-31 or 2025-01-31T14:05:00Z) or epoch seconds",
            )
        if not nullable:
            null = raw.isna().to_numpy()
            if null.any():
                self.add(
                    table,
                    column,
                    f"{int(null.sum())} rows have no {column}",
                    _rows(null),
                    fix=f"every {table} row needs a {column}",
                )
        return parsed


# --------------------------------------------------------------------------- main entry


def validate_dataset(
    users: pd.DataFrame,
    items: pd.DataFrame,
    interactions: pd.DataFrame,
    sources: dict[str, str] | None = None,
) -> Dataset:
    """Check all three tables, raise `DataValidationError` listing every problem, else normalise.

    The input frames are never modified; the returned `Dataset` holds copies.
    """
    srcs = {"users": "users table", "items": "items table", "interactions": "interactions table"}
    srcs.update(sources or {})
    chk = _Checker(srcs)

    # ---- users
    users_required = [c.name for c in USERS_COLUMNS if c.required]
    chk.required_columns("users", users, users_required)
    chk.not_empty("users", users)
    user_ids = chk.ids("users", users, "user_id", unique=True)

    # ---- items
    items_required = [c.name for c in ITEMS_COLUMNS if c.required]
    chk.required_columns("items", items, items_required)
    chk.not_empty("items", items)
    item_ids = chk.ids("items", items, "item_id", unique=True)
    price = chk.numeric("items", items, "price", non_negative=True)
    duration = chk.numeric("items", items, "duration_s", non_negative=True)
    released = chk.datetimes("items", items, "released_at", nullable=True)

    # ---- interactions
    inter_required = [c.name for c in INTERACTIONS_COLUMNS if c.required]
    chk.required_columns("interactions", interactions, inter_required)
    has_decision = "decision" in interactions.columns
    has_rating = "rating" in interactions.columns
    if not (has_decision or has_rating):
        chk.add(
            "interactions",
            "decision",
            "needs a 'decision' column (like/nope) or a 'rating' column (0..1); found neither "
            f"(found: {', '.join(map(str, interactions.columns)) or 'no columns'})",
            fix="add a 'decision' column with like/nope or a 'rating' column with numbers in [0, 1]",
        )
    chk.not_empty("interactions", interactions)
    inter_users = chk.ids("interactions", interactions, "user_id", unique=False)
    inter_items = chk.ids("interactions", interactions, "item_id", unique=False)
    for ids, known, name in ((inter_users, user_ids, "user"), (inter_items, item_ids, "item")):
        if ids is None or known is None:
            continue
        known_set = set(known.dropna())
        unknown = ids.notna().to_numpy() & ~ids.isin(known_set).to_numpy()
        if unknown.any():
            n_distinct = ids[unknown].nunique()
            chk.add(
                "interactions",
                f"{name}_id",
                f"{int(unknown.sum())} rows name {n_distinct} {name}s missing from the {name}s table "
                f"({srcs[name + 's']}), e.g. {_examples(ids, unknown)}",
                _rows(unknown),
                fix=f"add those {name}s to the {name}s table or drop the interactions that name them",
            )
    timestamps = chk.datetimes("interactions", interactions, "timestamp", nullable=False)

    decision_label: np.ndarray | None = None  # -1 = missing
    if has_decision:
        text = _decision_text(interactions["decision"].reset_index(drop=True))
        is_like = text.isin(LIKE_VALUES).to_numpy()
        is_nope = text.isin(NOPE_VALUES).to_numpy()
        present = text.notna().to_numpy()
        invalid = present & ~is_like & ~is_nope
        if invalid.any():
            chk.add(
                "interactions",
                "decision",
                f"{int(invalid.sum())} values are neither like nor nope, e.g. "
                f"{_examples(interactions['decision'].reset_index(drop=True), invalid)}",
                _rows(invalid),
                fix=f"use one of {sorted(LIKE_VALUES)} for a like or {sorted(NOPE_VALUES)} for a nope (case-insensitive)",
            )
        decision_label = np.where(is_like, 1, np.where(is_nope, 0, -1)).astype(np.int8)

    rating_values: pd.Series | None = None
    if has_rating:
        raw = interactions["rating"].reset_index(drop=True)
        rating_values = chk.numeric("interactions", interactions, "rating", non_negative=False)
        assert rating_values is not None
        lo, hi = RATING_RANGE
        out = ((rating_values < lo) | (rating_values > hi)).to_numpy()
        if out.any():
            chk.add(
                "interactions",
                "rating",
                f"{int(out.sum())} ratings are outside [{lo}, {hi}], e.g. {_examples(raw, out)}",
                _rows(out),
                fix=f"scale ratings into [{lo}, {hi}] (e.g. stars / 5); >= {LIKE_THRESHOLD} counts as a like",
            )
        missing = raw.isna().to_numpy()
        if decision_label is not None:
            missing = missing & (decision_label < 0)
        if missing.any():
            chk.add(
                "interactions",
                "rating",
                f"{int(missing.sum())} ratings are empty (NaN)"
                + (" and have no decision either" if has_decision else ""),
                _rows(missing),
                fix="fill every rating with a number in [0, 1] (or give a like/nope decision), or drop those rows",
            )
    elif decision_label is not None:
        missing = (decision_label < 0) & interactions["decision"].reset_index(drop=True).isna().to_numpy()
        if missing.any():
            chk.add(
                "interactions",
                "decision",
                f"{int(missing.sum())} rows have an empty decision",
                _rows(missing),
                fix="every interaction needs like or nope; drop or fill those rows",
            )

    if chk.problems:
        err = DataValidationError(chk.problems)
        log.error("input data rejected: %s", err)
        raise err

    # ---- normalise (only reached when everything is valid)
    assert user_ids is not None and item_ids is not None
    assert inter_users is not None and inter_items is not None and timestamps is not None
    out_users = users.reset_index(drop=True).copy()
    out_users["user_id"] = user_ids.astype(str).to_numpy()

    out_items = items.reset_index(drop=True).copy()
    out_items["item_id"] = item_ids.astype(str).to_numpy()
    for col in ("title", "description"):
        out_items[col] = out_items[col].map(lambda v: "" if _is_null_scalar(v) else str(v)).astype(object)
    out_items["tags"] = pd.Series([_parse_tags(v) for v in out_items["tags"].tolist()], dtype=object)
    for col in ("genre", "maker"):
        out_items[col] = out_items[col].map(lambda v: None if _is_null_scalar(v) else str(v)).astype(object)
    assert price is not None and duration is not None and released is not None
    out_items["price"] = price.to_numpy()
    out_items["duration_s"] = duration.to_numpy()
    out_items["released_at"] = released.to_numpy()

    out_inter = interactions.reset_index(drop=True).copy()
    out_inter["user_id"] = inter_users.astype(str).to_numpy()
    out_inter["item_id"] = inter_items.astype(str).to_numpy()
    out_inter["timestamp"] = timestamps.to_numpy()
    if rating_values is not None:
        rating_label = (rating_values.to_numpy() >= LIKE_THRESHOLD).astype(np.int8)
    if decision_label is not None:
        label = decision_label.copy()
        if rating_values is not None:
            label = np.where(label < 0, rating_label, label).astype(np.int8)
        out_inter["decision"] = np.where(label == 1, "like", "nope").astype(object)
    else:
        label = rating_label
    rating = (
        rating_values.fillna(pd.Series(label, dtype="float64")).to_numpy()
        if rating_values is not None
        else label.astype("float64")
    )
    out_inter["rating"] = rating.astype(np.float32)
    out_inter["label"] = label.astype(np.int8)
    out_inter = out_inter.sort_values(["timestamp", "user_id"], kind="mergesort").reset_index(drop=True)

    dataset = Dataset(users=out_users, items=out_items, interactions=out_inter, sources=dict(srcs))
    log.debug(
        "validated dataset %s: like rate %.3f",
        dataset.row_counts(),
        float(out_inter["label"].mean()) if len(out_inter) else float("nan"),
    )
    return dataset


__all__ = ["Problem", "DataValidationError", "validate_dataset", "MAX_EXAMPLE_ROWS"]

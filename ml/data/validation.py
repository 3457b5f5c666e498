"""Check the three raw input tables against `ml.data.schema` and normalise them.

Every loader (CSV/Parquet folder, PostgreSQL, synthetic generator) hands raw frames
to `validate_dataset`. It collects *all* problems before raising, so a user fixing
a broken export sees the whole list at once (file, column, example rows, fix)
instead of one error per run. On success it returns a `Dataset` whose dtypes are
the same whatever the source was: string ids, list tags, tz-naive UTC timestamps,
an int8 `label` and a float32 `rating` on interactions. Ratings become labels by their
scale (`ml.data.ratings`: inferred, or `data.rating_scale` / `data.like_threshold`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ml.data.parsing import decision_text, id_strings, is_null_scalar, parse_datetimes, parse_tags
from ml.data.ratings import (
    RatingInfo,
    RatingScale,
    closest_scale,
    infer_rating_scale,
    parse_rating_scale,
    with_threshold,
)
from ml.data.schema import INTERACTIONS_COLUMNS, ITEMS_COLUMNS, LIKE_VALUES, NOPE_VALUES, USERS_COLUMNS, Dataset
from ml.logs import FILE_ONLY, get_logger

log = get_logger("training")

MAX_EXAMPLE_ROWS = 5


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
            text += f"; fix: {self.fix}"  # one line per problem
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


def _columns(frame: pd.DataFrame) -> str:
    return ", ".join(map(str, frame.columns)) or "no columns"


class _Checker:
    def __init__(self, sources: dict[str, str]):
        self.sources = sources
        self.problems: list[Problem] = []

    def add(self, table: str, column: str | None, message: str, rows: list[int] | None = None, fix: str = "") -> None:
        self.problems.append(Problem(table=table, source=self.sources.get(table, table), column=column,
                                     message=message, example_rows=list(rows or [])[:MAX_EXAMPLE_ROWS], fix=fix))

    def shape(self, table: str, frame: pd.DataFrame, required: list[str]) -> bool:
        """Required columns present and at least one row; False stops the table's value checks."""
        missing = [c for c in required if c not in frame.columns]
        for col in missing:
            self.add(table, col, f"missing required column '{col}' (found: {_columns(frame)})",
                     fix=f"add a '{col}' column to the {table} table (see ml/data/schema.py)")
        if len(frame) == 0:
            has_header = len(frame.columns) > 0
            self.add(table, None, f"the {table} table has no rows"
                     + (f" (a header with {_columns(frame)}, but no data below it)" if has_header else ""),
                     fix=f"export at least one {table} row under the header")
            return False
        return not missing

    def ids(self, table: str, frame: pd.DataFrame, column: str, unique: bool) -> pd.Series | None:
        if column not in frame.columns:
            return None
        ids = id_strings(frame[column].reset_index(drop=True))
        null = ids.isna().to_numpy()
        if null.any():
            self.add(table, column, f"{int(null.sum())} rows have an empty {column}", _rows(null),
                     fix=f"every {table} row needs a {column}; drop or fill those rows")
        if unique:
            dup = ids.duplicated(keep=False).to_numpy() & ~null
            if dup.any():
                self.add(table, column, f"{ids[dup].nunique()} {column} values appear more than once, e.g. "
                         f"{', '.join(repr(v) for v in ids[dup].drop_duplicates().head(3))}", _rows(dup),
                         fix=f"{column} must be unique: remove duplicate rows or merge them")
        return ids

    def numeric(self, table: str, frame: pd.DataFrame, column: str, non_negative: bool) -> pd.Series | None:
        if column not in frame.columns:
            return None
        raw = frame[column].reset_index(drop=True)
        if pd.api.types.is_bool_dtype(raw.dtype):
            raw = raw.astype(object)
        values = pd.to_numeric(raw, errors="coerce").astype("float64")
        bad = ~raw.isna().to_numpy(dtype=bool) & values.isna().to_numpy(dtype=bool)
        if pd.api.types.is_object_dtype(raw.dtype):
            bad |= raw.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(dtype=bool)
        if bad.any():
            self.add(table, column, f"{int(bad.sum())} values are not numbers, e.g. {_examples(raw, bad)}", _rows(bad),
                     fix=f"write {column} as a plain number (e.g. 9.99), without units or currency signs; leave it "
                         "empty if unknown")
        if non_negative:
            neg = (values < 0).to_numpy(dtype=bool)
            if neg.any():
                self.add(table, column, f"{int(neg.sum())} values are negative, e.g. {_examples(raw, neg)}",
                         _rows(neg), fix=f"{column} must be >= 0")
        return values

    def datetimes(self, table: str, frame: pd.DataFrame, column: str, nullable: bool) -> pd.Series | None:
        if column not in frame.columns:
            return None
        raw = frame[column].reset_index(drop=True)
        parsed, bad = parse_datetimes(raw)
        if bad.any():
            self.add(table, column, f"{int(bad.sum())} values are not valid timestamps, e.g. {_examples(raw, bad)}",
                     _rows(bad), fix="use ISO 8601 (2025-01-31 or 2025-01-31T14:05:00Z) or epoch seconds")
        if not nullable:
            null = raw.isna().to_numpy(dtype=bool)
            if null.any():
                self.add(table, column, f"{int(null.sum())} rows have no {column}", _rows(null),
                         fix=f"every {table} row needs a {column}")
        return parsed


# --------------------------------------------------------------------------- tables


def _check_users(chk: _Checker, users: pd.DataFrame) -> pd.Series | None:
    if not chk.shape("users", users, [c.name for c in USERS_COLUMNS if c.required]):
        return None
    return chk.ids("users", users, "user_id", unique=True)


def _check_items(chk: _Checker, items: pd.DataFrame) -> dict[str, pd.Series | None] | None:
    if not chk.shape("items", items, [c.name for c in ITEMS_COLUMNS if c.required]):
        return None
    return {"item_id": chk.ids("items", items, "item_id", unique=True),
            "price": chk.numeric("items", items, "price", non_negative=True),
            "duration_s": chk.numeric("items", items, "duration_s", non_negative=True),
            "released_at": chk.datetimes("items", items, "released_at", nullable=True)}


def _check_known(chk: _Checker, ids: pd.Series | None, known: pd.Series | None, name: str) -> None:
    """Interactions naming users/items missing from their table."""
    if ids is None or known is None:
        return
    unknown = ids.notna().to_numpy() & ~ids.isin(set(known.dropna())).to_numpy()
    if unknown.any():
        chk.add("interactions", f"{name}_id",
                f"{int(unknown.sum())} rows name {ids[unknown].nunique()} {name}s missing from the {name}s table "
                f"({chk.sources[name + 's']}), e.g. {_examples(ids, unknown)}", _rows(unknown),
                fix=f"add those {name}s to the {name}s table or drop the interactions that name them")


def _check_decisions(chk: _Checker, interactions: pd.DataFrame) -> np.ndarray | None:
    """Labels from the decision column (-1 where missing), or None without one."""
    if "decision" not in interactions.columns:
        return None
    raw = interactions["decision"].reset_index(drop=True)
    text = decision_text(raw)
    is_like, is_nope = text.isin(LIKE_VALUES).to_numpy(), text.isin(NOPE_VALUES).to_numpy()
    invalid = text.notna().to_numpy() & ~is_like & ~is_nope
    if invalid.any():
        chk.add("interactions", "decision", f"{int(invalid.sum())} values are neither like nor nope, e.g. "
                f"{_examples(raw, invalid)}", _rows(invalid),
                fix=f"use one of {sorted(LIKE_VALUES)} for a like or {sorted(NOPE_VALUES)} for a nope (case-insensitive)")
    label = np.where(is_like, 1, np.where(is_nope, 0, -1)).astype(np.int8)
    if "rating" not in interactions.columns:
        missing = (label < 0) & raw.isna().to_numpy(dtype=bool)
        if missing.any():
            chk.add("interactions", "decision", f"{int(missing.sum())} rows have an empty decision", _rows(missing),
                    fix="every interaction needs like or nope; drop or fill those rows")
    return label


def _rating_scale(chk: _Checker, raw: pd.Series, values: pd.Series, configured: RatingScale | None) -> RatingScale | None:
    """The configured scale, or the one the ratings fit; out-of-scale ratings are reported against it."""
    finite = values.to_numpy(dtype=np.float64, na_value=np.nan)
    scale = configured or infer_rating_scale(finite)
    reference = scale or closest_scale(finite)
    lo, hi = reference.accepts
    out = (values < lo).to_numpy(dtype=bool) | (values > hi).to_numpy(dtype=bool)
    if not out.any():
        return scale
    v = finite[np.isfinite(finite)]
    if configured is not None:
        why = f"the configured {configured.describe().split(';')[0]} admits [{lo:g}, {hi:g}]"
        fix = "set data.rating_scale to the scale the ratings use (auto infers 0-1, 1-5 or 1-10), or fix those rows"
    else:
        why = (f"the ratings span {v.min():g}..{v.max():g}, which fits none of the scales towerops infers (0-1, "
               f"1-5 or 1-10 stars in half steps); most fit [{lo:g}, {hi:g}]")
        fix = (f"scale ratings into [{lo:g}, {hi:g}], or set data.rating_scale to their scale (e.g. [0, 100]) and "
               "data.like_threshold (the rating from which a swipe counts as a like)")
    chk.add("interactions", "rating", f"{int(out.sum())} ratings are outside [{lo}, {hi}], e.g. {_examples(raw, out)}; "
            f"{why}", _rows(out), fix=fix)
    return None


def _check_ratings(chk: _Checker, interactions: pd.DataFrame, decision_label: np.ndarray | None,
                   configured: RatingScale | None) -> tuple[pd.Series | None, RatingScale | None]:
    """Rating values (float64) and the scale that turns them into likes."""
    if "rating" not in interactions.columns:
        return None, None
    raw = interactions["rating"].reset_index(drop=True)
    values = chk.numeric("interactions", interactions, "rating", non_negative=False)
    assert values is not None
    scale = _rating_scale(chk, raw, values, configured)
    missing = raw.isna().to_numpy(dtype=bool)
    if decision_label is not None:
        missing = missing & (decision_label < 0)
    if missing.any():
        on = f"a number on the {scale.describe().split(';')[0]}" if scale else "a rating"
        chk.add("interactions", "rating", f"{int(missing.sum())} ratings are empty (NaN)"
                + (" and have no decision either" if decision_label is not None else ""), _rows(missing),
                fix=f"fill every rating with {on} (or give a like/nope decision), or drop those rows")
    return values, scale


def _check_interactions(chk: _Checker, interactions: pd.DataFrame, user_ids: pd.Series | None,
                        item_ids: pd.Series | None, configured: RatingScale | None,
                        like_threshold: float | None = None) -> dict[str, Any] | None:
    has_label_column = bool({"decision", "rating"} & set(interactions.columns))
    if not has_label_column:
        chk.add("interactions", "decision", "needs a 'decision' column (like/nope) or a 'rating' column (0-1 or 1-5 / "
                f"1-10 stars); found neither (found: {_columns(interactions)})",
                fix="add a 'decision' column with like/nope or a 'rating' column (e.g. stars 1-5, >= 4 is a like)")
    if not chk.shape("interactions", interactions, [c.name for c in INTERACTIONS_COLUMNS if c.required]) \
            or not has_label_column:
        return None
    users = chk.ids("interactions", interactions, "user_id", unique=False)
    items = chk.ids("interactions", interactions, "item_id", unique=False)
    _check_known(chk, users, user_ids, "user")
    _check_known(chk, items, item_ids, "item")
    timestamps = chk.datetimes("interactions", interactions, "timestamp", nullable=False)
    decisions = _check_decisions(chk, interactions)
    ratings, scale = _check_ratings(chk, interactions, decisions, configured)
    if scale is not None and configured is None and like_threshold is not None:
        try:
            scale = with_threshold(scale, like_threshold)  # an inferred scale, a configured threshold
        except ValueError as exc:
            chk.add("interactions", "rating", str(exc), fix="set data.like_threshold to a rating on that scale")
    return {"user_id": users, "item_id": items, "timestamp": timestamps, "decisions": decisions,
            "ratings": ratings, "scale": scale}


# --------------------------------------------------------------------------- normalise


def _normal_items(items: pd.DataFrame, checked: dict[str, pd.Series | None]) -> pd.DataFrame:
    out = items.reset_index(drop=True).copy()
    out["item_id"] = checked["item_id"].astype(str).to_numpy()
    for col in ("title", "description"):
        out[col] = out[col].map(lambda v: "" if is_null_scalar(v) else str(v)).astype(object)
    out["tags"] = pd.Series([parse_tags(v) for v in out["tags"].tolist()], dtype=object)
    for col in ("genre", "maker"):
        out[col] = out[col].map(lambda v: None if is_null_scalar(v) else str(v)).astype(object)
    for col in ("price", "duration_s", "released_at"):
        out[col] = checked[col].to_numpy()
    return out


def _normal_interactions(interactions: pd.DataFrame, checked: dict[str, Any]) -> tuple[pd.DataFrame, RatingInfo | None]:
    """ids, timestamps, label (decision wins over rating), rating; sorted by time."""
    out = interactions.reset_index(drop=True).copy()
    for col in ("user_id", "item_id"):
        out[col] = checked[col].astype(str).to_numpy()
    out["timestamp"] = checked["timestamp"].to_numpy()
    decisions, values, scale = checked["decisions"], checked["ratings"], checked["scale"]
    n = len(out)
    if values is None:
        from_rating = np.zeros(n, dtype=bool)
    else:
        from_rating = np.ones(n, dtype=bool) if decisions is None else decisions < 0
    label = np.zeros(n, np.int8) if decisions is None else decisions.copy()
    if values is not None:
        rating = values.to_numpy(dtype=np.float64, na_value=np.nan)
        label = np.where(from_rating, rating >= scale.like_threshold, label).astype(np.int8)
        if (scale.low, scale.high) == (0.0, 1.0):
            rating = np.where(np.isnan(rating), label, rating)  # a 0-1 score: a decision is a full score
    else:
        rating = label.astype(np.float64)
    if decisions is not None:
        out["decision"] = np.where(label == 1, "like", "nope").astype(object)
    out["rating"] = rating.astype(np.float32)
    out["label"] = label.astype(np.int8)
    order = out.sort_values(["timestamp", "user_id"], kind="mergesort").index.to_numpy()
    out = out.iloc[order].reset_index(drop=True)
    return out, (RatingInfo(scale, from_rating[order]) if values is not None else None)


# --------------------------------------------------------------------------- main entry


def validate_dataset(
    users: pd.DataFrame,
    items: pd.DataFrame,
    interactions: pd.DataFrame,
    sources: dict[str, str] | None = None,
    rating_scale: Any = "auto",
    like_threshold: float | None = None,
) -> Dataset:
    """Check all three tables, raise `DataValidationError` listing every problem, else normalise.

    `rating_scale` / `like_threshold` are the config's `data.*` ("auto": infer the scale from
    the ratings). The input frames are never modified; the returned `Dataset` holds copies.
    """
    srcs = {"users": "users table", "items": "items table", "interactions": "interactions table"}
    srcs.update(sources or {})
    chk = _Checker(srcs)
    try:
        configured = parse_rating_scale(rating_scale, like_threshold)
    except ValueError as exc:
        chk.add("interactions", "rating", str(exc), fix="fix data.rating_scale / data.like_threshold in the config")
        configured = None
    user_ids = _check_users(chk, users)
    checked_items = _check_items(chk, items)
    checked = _check_interactions(chk, interactions, user_ids, checked_items and checked_items["item_id"], configured,
                                  like_threshold)
    if chk.problems:
        err = DataValidationError(chk.problems)
        log.error("input data rejected: %s", err, extra=FILE_ONLY)  # the caller shows the error once
        raise err
    assert user_ids is not None and checked_items is not None and checked is not None
    out_users = users.reset_index(drop=True).copy()
    out_users["user_id"] = user_ids.astype(str).to_numpy()
    out_inter, ratings = _normal_interactions(interactions, checked)
    dataset = Dataset(users=out_users, items=_normal_items(items, checked_items), interactions=out_inter,
                      sources=dict(srcs), ratings=ratings)
    if ratings is not None and int(ratings.from_rating.sum()):
        log.info("%s: %s", srcs["interactions"], ratings.scale.describe())
    log.debug("validated dataset %s: like rate %.3f", dataset.row_counts(), float(out_inter["label"].mean()))
    return dataset


def validate_items(items: pd.DataFrame, source: str = "items table") -> pd.DataFrame:
    """Check the items table alone (a catalog refresh reads nothing else), raise `DataValidationError`
    listing every problem, else return the normalised copy `validate_dataset` would hold."""
    chk = _Checker({"users": "users table", "items": source, "interactions": "interactions table"})
    checked = _check_items(chk, items)
    if chk.problems:
        err = DataValidationError(chk.problems)
        log.error("items rejected: %s", err, extra=FILE_ONLY)
        raise err
    assert checked is not None
    return _normal_items(items, checked)


__all__ = ["Problem", "DataValidationError", "validate_dataset", "validate_items", "MAX_EXAMPLE_ROWS"]

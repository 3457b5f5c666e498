"""Parsing raw cell values the same way whatever the source (CSV strings, Parquet, PostgreSQL types):
ids as stripped strings, timestamps as tz-naive UTC, tags as lists, decisions as lower-case words."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ml.data.schema import TAG_SEPARATOR

# Epoch seconds outside this window do not fit datetime64[ns] (years 1677..2262).
_EPOCH_LIMIT_S = 9.2e9


def is_null_scalar(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:
        return bool(pd.isna(value)) if np.ndim(value) == 0 else False
    except (TypeError, ValueError):
        return False


def id_strings(series: pd.Series) -> pd.Series:
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


def parse_datetimes(series: pd.Series) -> tuple[pd.Series, np.ndarray]:
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


def parse_tags(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [t.strip() for t in value.split(TAG_SEPARATOR) if t.strip()]
    if isinstance(value, (list, tuple, np.ndarray, pd.Series)):
        return [str(t).strip() for t in value if not is_null_scalar(t) and str(t).strip()]
    if is_null_scalar(value):
        return []
    return [t.strip() for t in str(value).split(TAG_SEPARATOR) if t.strip()]


def decision_text(series: pd.Series) -> pd.Series:
    """Lower-cased decision strings (None where missing); 1.0 reads as '1'."""

    def one(v: Any) -> str | None:
        if is_null_scalar(v):
            return None
        if isinstance(v, (bool, np.bool_)):
            return "true" if v else "false"
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            return str(int(v))
        return str(v).strip().lower()

    present = series.notna().to_numpy()
    values = series.to_numpy(dtype=object)
    if present.any() and all(type(v) is str for v in values[present]):  # noqa: E721 - exact str: the common case
        out = np.full(len(series), None, dtype=object)
        out[present] = pd.Series(values[present], dtype=object).str.strip().str.lower().to_numpy(dtype=object)
        return pd.Series(out, index=series.index, dtype=object)
    return series.map(one).astype(object)

"""Reading the prediction log serving writes: one JSON object per line (JSON Lines).

The format, its field names and which of them every line must carry are defined once, in
`ml.inference.prediction_log` (FIELDS, REQUIRED_FIELDS); this module only reads it. A line
needs REQUIRED_FIELDS (ts as ISO 8601 or epoch seconds, user_id, top_k, items, scores,
latency_ms, model_version); `status` ("ok"/"error") is read for the error share and defaults
to "ok"; lines with `"shadow": true` (a challenger scored in the shadow, never shown) are
skipped; other fields are ignored. Error rows have empty items/scores. Files may be rotated:
pass a folder to read every `*.jsonl` (and `*.jsonl.gz`) in it. Why JSON lines: append-only,
one write per request, readable with no schema registry, and a torn last line (a crash
mid-write) loses one request only.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ml.inference.prediction_log import REQUIRED_FIELDS


def write_prediction_log(records: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Append records as JSON lines (tests, replays)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, default=str) + "\n")
    return p


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted([*path.glob("*.jsonl"), *path.glob("*.jsonl.gz")])
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"prediction log {path} does not exist; pass the JSON-lines file (or its folder) "
                            "written by the inference service")


def read_prediction_log(path: str | Path, start: Any = None, end: Any = None) -> pd.DataFrame:
    """One row per request (ts as naive UTC timestamps), optionally within [start, end).

    Errors name the file, the line and the missing field or bad value.
    """
    rows: list[dict[str, Any]] = []
    files = _files(Path(path))
    if not files:
        raise FileNotFoundError(f"prediction log folder {path} holds no *.jsonl files")
    for file in files:
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rt", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                if n == len(lines):  # torn last line of a live file
                    continue
                raise ValueError(f"{file}:{n}: not valid JSON ({exc}); each line must be one JSON object") from exc
            if rec.get("shadow") is True:  # scored by a shadow challenger, never shown: not served traffic
                continue
            missing = [f for f in REQUIRED_FIELDS if f not in rec]
            if missing:
                raise ValueError(f"{file}:{n}: missing field(s) {', '.join(missing)}; "
                                 f"every line needs {', '.join(REQUIRED_FIELDS)}")
            items, scores = rec["items"], rec["scores"]
            if not isinstance(items, list) or not isinstance(scores, list) or len(items) != len(scores):
                raise ValueError(f"{file}:{n}: items and scores must be lists of the same length "
                                 f"(got {type(items).__name__} {len(items) if isinstance(items, list) else ''} / "
                                 f"{type(scores).__name__} {len(scores) if isinstance(scores, list) else ''})")
            rows.append({**{f: rec[f] for f in REQUIRED_FIELDS}, "status": rec.get("status") or "ok"})
    frame = pd.DataFrame(rows, columns=[*REQUIRED_FIELDS, "status"])
    ts = frame["ts"]
    numeric = pd.to_numeric(ts, errors="coerce")
    parsed = pd.to_datetime(ts.where(numeric.isna()), errors="coerce", utc=True, format="ISO8601")
    has_epoch = numeric.notna()
    if has_epoch.any():  # convert only the numeric entries (NaN slots trip pandas' unit cast)
        parsed[has_epoch] = pd.to_datetime(numeric[has_epoch], unit="s", utc=True)
    bad = parsed.isna()
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} line(s) have an unreadable ts, e.g. {ts[bad].iloc[0]!r}; "
                         "use ISO 8601 or epoch seconds")
    frame["ts"] = parsed.dt.tz_localize(None)
    frame["latency_ms"] = pd.to_numeric(frame["latency_ms"], errors="coerce")
    frame["user_id"] = frame["user_id"].map(lambda u: None if u is None else str(u))
    if start is not None:
        frame = frame[frame["ts"] >= pd.Timestamp(start)]
    if end is not None:
        frame = frame[frame["ts"] < pd.Timestamp(end)]
    return frame.reset_index(drop=True)


def explode_recommendations(log_frame: pd.DataFrame, popular: set[str]) -> pd.DataFrame:
    """One row per recommended item: request ts, user_id, rank, item_id, score, popular (0/1)."""
    if log_frame.empty:
        return pd.DataFrame(columns=["ts", "user_id", "rank", "item_id", "score", "popular"])
    lengths = log_frame["items"].map(len).to_numpy()
    items = np.array([str(i) for lst in log_frame["items"] for i in lst], dtype=object)
    return pd.DataFrame({
        "ts": np.repeat(log_frame["ts"].to_numpy(), lengths),
        "user_id": np.repeat(log_frame["user_id"].to_numpy(dtype=object), lengths),
        "rank": np.concatenate([np.arange(1, n + 1) for n in lengths]) if len(lengths) else [],
        "item_id": items,
        "score": np.array([float(s) for lst in log_frame["scores"] for s in lst]),
        "popular": np.isin(items, list(popular)).astype(float),
    })


def performance_windows(log_frame: pd.DataFrame, window: str = "5min") -> pd.DataFrame:
    """Latency percentiles and throughput per time window (windows with no requests omitted)."""
    if log_frame.empty:
        return pd.DataFrame(columns=["window_start", "requests", "throughput_rps", "latency_p50_ms",
                                     "latency_p95_ms", "latency_p99_ms"])
    seconds = pd.Timedelta(window).total_seconds()
    grouped = log_frame.set_index("ts")["latency_ms"].resample(window)
    out = pd.DataFrame({
        "requests": grouped.count(),
        "latency_p50_ms": grouped.quantile(0.50),
        "latency_p95_ms": grouped.quantile(0.95),
        "latency_p99_ms": grouped.quantile(0.99),
    })
    out = out[out["requests"] > 0]
    out.insert(1, "throughput_rps", out["requests"] / seconds)
    return out.rename_axis("window_start").reset_index()

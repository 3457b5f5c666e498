"""The sampled prediction log serving writes and monitoring reads (JSON Lines).

One JSON object per line, one line per answered (or refused) request row:

    {"ts": "2026-11-03T12:00:01.250Z",    # ISO 8601, UTC, millisecond precision
     "request_id": "9f1c...",             # 32 hex chars, unique per request row
     "user_id": "u00042",                 # string, or null for an anonymous cold-start request
     "cold": false,                       # true when the embedding came from the request's swipes
     "top_k": 10,                         # k requested (null when the request had no valid k)
     "items": ["i00017", "i00230"],       # recommended item ids, best first (len <= top_k; [] on error)
     "scores": [0.8123, 0.7991],          # the model's score of each item, same order ([] on error)
     "latency_ms": 1.73,                  # server-side time to answer this row, milliseconds
     "model_version": "3",                # registry version ($TOWEROPS_MODEL_VERSION) or run id
     "status": "ok",                      # "ok" or "error"
     "error": null}                       # the message sent back to the client when status is "error"

Readers must ignore fields they do not know. Settings come from the environment so a
server started by `mlflow models serve` can be configured without code:

    TOWEROPS_PREDICTION_LOG          path of the file (default logs/predictions.jsonl, i.e.
                                     $TOWEROPS_LOG_DIR/predictions.jsonl beside inference.log)
    TOWEROPS_PREDICTION_LOG_SAMPLE   fraction of request rows written, 0..1 (default 1.0)

Why this shape: append-only lines need no schema registry, a torn last line (a crash
mid-write) loses one request only, and each line is one `write` on an O_APPEND file so
several server workers can share the file. Rotation is the reader's friend: the file is
opened per write, so moving it away starts a new one.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

ENV_PATH = "TOWEROPS_PREDICTION_LOG"
ENV_SAMPLE = "TOWEROPS_PREDICTION_LOG_SAMPLE"
DEFAULT_PATH = "logs/predictions.jsonl"
FIELDS = ("ts", "request_id", "user_id", "cold", "top_k", "items", "scores", "latency_ms", "model_version",
          "status", "error")


def default_path() -> Path:
    """logs/predictions.jsonl, in $TOWEROPS_LOG_DIR when that is set (like logs/inference.log)."""
    from ml.logs import log_dir

    return log_dir() / "predictions.jsonl"


def new_request_id() -> str:
    """A fresh request id (uuid4, hex)."""
    return uuid.uuid4().hex


def utc_now_iso() -> str:
    """Current time as ISO 8601 UTC with milliseconds, e.g. 2026-11-03T12:00:01.250Z."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def sample_rate_from_env(value: str | None = None) -> float:
    """Parse $TOWEROPS_PREDICTION_LOG_SAMPLE; a bad value is an error that names the variable."""
    raw = os.environ.get(ENV_SAMPLE) if value is None else value
    if raw is None or raw.strip() == "":
        return 1.0
    try:
        rate = float(raw)
    except ValueError as exc:
        raise ValueError(f"{ENV_SAMPLE}={raw!r} is not a number; set a fraction between 0 and 1, e.g. 0.1") from exc
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{ENV_SAMPLE}={raw!r} is outside [0, 1]; set a fraction between 0 and 1, e.g. 0.1")
    return rate


class PredictionLogger:
    """Writes sampled request/response records; thread-safe, one `write` per line."""

    def __init__(self, path: str | Path | None = None, sample_rate: float | None = None,
                 model_version: str | None = None, seed: int | None = None) -> None:
        self.path = Path(path or os.environ.get(ENV_PATH) or default_path())
        self.sample_rate = sample_rate_from_env() if sample_rate is None else sample_rate_from_env(str(sample_rate))
        self.model_version = model_version
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._dir_ready = False

    def sampled(self) -> bool:
        """Whether the next request row should be written (Bernoulli with the sample rate)."""
        if self.sample_rate >= 1.0:
            return True
        if self.sample_rate <= 0.0:
            return False
        with self._lock:
            return self._rng.random() < self.sample_rate

    def record(self, *, user_id: str | None, cold: bool, top_k: int | None, items: Sequence[str],
               scores: Sequence[float], latency_ms: float, status: str = "ok", error: str | None = None,
               request_id: str | None = None, ts: str | None = None) -> dict[str, Any]:
        """Build one record in the documented format (not written)."""
        return {
            "ts": ts or utc_now_iso(),
            "request_id": request_id or new_request_id(),
            "user_id": None if user_id is None else str(user_id),
            "cold": bool(cold),
            "top_k": None if top_k is None else int(top_k),
            "items": [str(i) for i in items],
            "scores": [float(s) for s in scores],
            "latency_ms": round(float(latency_ms), 3),
            "model_version": self.model_version,
            "status": status,
            "error": error,
        }

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as a line; IO errors are swallowed by the caller's choice (see `log`)."""
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")
        if not self._dir_ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._dir_ready = True
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def log(self, **fields: Any) -> bool:
        """Sample, build and append a record; True when written. Never raises: serving goes on."""
        if not self.sampled():
            return False
        try:
            self.write(self.record(**fields))
            return True
        except OSError:
            from ml.logs import get_logger

            get_logger("inference").exception("could not append to prediction log %s", self.path)
            return False

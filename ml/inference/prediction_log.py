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
     "error": null,                       # the message sent back to the client when status is "error"
     "arm": "treatment",                  # A/B arm of the answer (null when one model is served)
     "shadow": false}                     # true: scored by the shadow challenger, never shown to the user

Readers must ignore fields they do not know. Settings come from the environment so a
server started by `mlflow models serve` can be configured without code:

    TOWEROPS_PREDICTION_LOG          path of the file (default logs/predictions.jsonl, i.e.
                                     $TOWEROPS_LOG_DIR/predictions.jsonl beside inference.log)
    TOWEROPS_PREDICTION_LOG_SAMPLE   fraction of request rows written, 0..1 (default 1.0)
    TOWEROPS_PREDICTION_LOG_MAX_BYTES  rotate when the file would grow past this size
                                     (default 50 MiB; 0 = never rotate)
    TOWEROPS_PREDICTION_LOG_BACKUPS  rotated files kept: predictions.1.jsonl (newest) ..
                                     predictions.<N>.jsonl (default 5)

Why this shape: append-only lines need no schema registry, a torn last line (a crash
mid-write) loses one request only, and each line is one `write` on an O_APPEND file so
several server workers can share the file. Rotation by size keeps the `.jsonl` suffix so
monitoring reads the rotated files too when given the folder; it runs under an flock of the
full file, so workers in several processes rotate it once, and the file is opened per write,
so the next line after a rotation (or after moving the file away) starts a new one.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any, Sequence

from ml.settings import get_settings

ENV_PATH = "TOWEROPS_PREDICTION_LOG"
ENV_SAMPLE = "TOWEROPS_PREDICTION_LOG_SAMPLE"
ENV_MAX_BYTES = "TOWEROPS_PREDICTION_LOG_MAX_BYTES"
ENV_BACKUPS = "TOWEROPS_PREDICTION_LOG_BACKUPS"
DEFAULT_PATH = "logs/predictions.jsonl"
FIELDS = ("ts", "request_id", "user_id", "cold", "top_k", "items", "scores", "latency_ms", "model_version",
          "status", "error", "arm", "shadow")
# What every line must carry for a reader (monitoring); the rest of FIELDS may be missing in
# lines from older writers or replays, and readers ignore fields they do not know.
REQUIRED_FIELDS = ("ts", "user_id", "top_k", "items", "scores", "latency_ms", "model_version")
STATUSES = ("ok", "error")


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
    if value is None:
        return get_settings().prediction_log_sample
    return get_settings({ENV_SAMPLE: value}).prediction_log_sample  # the same check, naming the variable


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def rotated_path(path: Path, index: int) -> Path:
    """predictions.jsonl -> predictions.<index>.jsonl (the suffix stays, so folder readers see it)."""
    return path.with_name(f"{path.stem}.{index}{path.suffix}")


class PredictionLogger:
    """Writes sampled request/response records; thread-safe, one `write` per line, rotated by size."""

    def __init__(self, path: str | Path | None = None, sample_rate: float | None = None,
                 model_version: str | None = None, seed: int | None = None,
                 max_bytes: int | None = None, backups: int | None = None, arm: str | None = None,
                 shadow: bool = False) -> None:
        self.path = Path(path or get_settings().prediction_log or default_path())
        self.sample_rate = sample_rate_from_env() if sample_rate is None else sample_rate_from_env(str(sample_rate))
        given = {k: str(v) for k, v in ((ENV_MAX_BYTES, max_bytes), (ENV_BACKUPS, backups)) if v is not None}
        settings = get_settings() if not given else get_settings({**os.environ, **given})  # same checks, named
        self.max_bytes = settings.prediction_log_max_bytes
        self.backups = settings.prediction_log_backups
        self.model_version = model_version
        self.arm = arm            # set by the A/B server on each arm's logger
        self.shadow = shadow
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
            "arm": self.arm,
            "shadow": self.shadow,
        }

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as a line; IO errors are swallowed by the caller's choice (see `log`)."""
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")
        if not self._dir_ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._dir_ready = True
        fd = self._open()
        try:
            if self._full(os.fstat(fd).st_size, len(line)) and self._rotate(fd, len(line)):
                os.close(fd)
                fd = -1
                fd = self._open()
            os.write(fd, line)
        finally:
            if fd >= 0:
                os.close(fd)

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _full(self, size: int, incoming: int) -> bool:
        return bool(self.max_bytes) and size > 0 and size + incoming > self.max_bytes

    def _rotate(self, fd: int, incoming: int) -> bool:
        """Shift predictions.jsonl -> .1.jsonl -> ... (the oldest beyond `backups` dropped). Under an
        flock of the full file, so a writer that waited for another's rotation only appends.
        True when `fd` no longer is the current file (reopen it)."""
        try:
            import fcntl
        except ImportError:  # not POSIX: one process per file
            fcntl = None  # type: ignore[assignment]
        with self._lock:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = _stat(self.path)
                if current is not None and os.path.samestat(os.fstat(fd), current) \
                        and self._full(current.st_size, incoming):
                    with suppress(FileNotFoundError):
                        os.unlink(rotated_path(self.path, self.backups))
                    for i in range(self.backups - 1, 0, -1):
                        with suppress(FileNotFoundError):
                            os.replace(rotated_path(self.path, i), rotated_path(self.path, i + 1))
                    with suppress(FileNotFoundError):  # moved away meanwhile: nothing to rotate
                        os.replace(self.path, rotated_path(self.path, 1))
                current = _stat(self.path)
                return current is None or not os.path.samestat(os.fstat(fd), current)
            finally:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)

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

"""The storage interface deployments are written through, and the error classes every
backend maps its native errors to.

Two kinds of failure matter to a deployment: transient ones (5xx, timeouts, connection
resets) are retried with exponential backoff; permanent ones (bad key, missing bucket,
object too large, any other 4xx) stop the sync at once, before anything is activated.
Backends raise `TransientStorageError` or a `PermanentStorageError` subclass and never
let a library exception through, so the deployer needs no backend-specific code.
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

T = TypeVar("T")

CHUNK = 1024 * 1024


class StorageError(RuntimeError):
    """Any storage failure."""


class TransientStorageError(StorageError, ConnectionError):
    """Worth retrying: 5xx, 408/429, timeouts, connection refused or reset."""


class PermanentStorageError(StorageError, ValueError):
    """A 4xx-class refusal: retrying cannot help; the message says what to fix."""

    def __init__(self, message: str, status: int | str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class StorageAuthError(PermanentStorageError, PermissionError):
    """The credentials were refused (401/403, invalid JWT, unknown access key)."""


class BucketNotFound(PermanentStorageError, FileNotFoundError):
    """The configured bucket does not exist."""


class ObjectTooLarge(PermanentStorageError):
    """The object exceeds the bucket's or the server's upload limit."""


@dataclass
class ObjectStat:
    """What a backend knows about a stored object without downloading it.

    `sha256` comes from object metadata written at upload (S3 `x-amz-meta-sha256`,
    Supabase user metadata) or from hashing (local folder); None when unknown. The ETag is
    kept for information only: multipart and SSE-KMS ETags are not content hashes.
    """

    key: str
    size: int
    sha256: str | None = None
    etag: str | None = None


@dataclass
class FileDigest:
    size: int
    sha256: str


def digest_file(path: str | Path) -> FileDigest:
    """Size and sha256 of a file, read in 1 MiB chunks."""
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return FileDigest(size, sha.hexdigest())


def digest_bytes(data: bytes) -> FileDigest:
    return FileDigest(len(data), hashlib.sha256(data).hexdigest())


@dataclass
class RetryPolicy:
    """Exponential backoff for transient errors: `attempts` tries in all, waits
    `backoff_s`, 2x, 4x ... capped at `max_backoff_s`."""

    attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 20.0

    def __post_init__(self) -> None:
        if int(self.attempts) < 1:
            raise ValueError(f"retry attempts={self.attempts} must be at least 1")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("retry backoff_s and max_backoff_s must be >= 0 seconds")

    def call(self, what: str, fn: Callable[[], T], log: logging.Logger | None = None) -> T:
        """Run `fn`, retrying TransientStorageError; permanent errors pass at once."""
        from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        def before_sleep(state: Any) -> None:
            if log is not None:
                exc = state.outcome.exception()
                log.warning("%s failed (attempt %d/%d): %s; retrying in %.1fs", what, state.attempt_number,
                            self.attempts, exc, state.next_action.sleep if state.next_action else 0.0)

        retrying = Retrying(
            stop=stop_after_attempt(int(self.attempts)),
            wait=wait_exponential(multiplier=self.backoff_s, min=self.backoff_s, max=self.max_backoff_s),
            retry=retry_if_exception_type(TransientStorageError),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(fn)
        except RetryError as exc:  # pragma: no cover - reraise=True returns the last exception
            raise exc.last_attempt.exception() from None  # type: ignore[misc]


class StorageBackend(ABC):
    """Objects in one bucket, addressed by '/'-separated keys.

    Every method may raise TransientStorageError (the caller retries) or a
    PermanentStorageError subclass; `stat` returns None for a missing object.
    """

    kind: str = "abstract"
    bucket: str

    @abstractmethod
    def describe(self) -> str:
        """Where objects go, for logs and manifests: no keys or tokens."""

    @abstractmethod
    def check(self) -> None:
        """Fail fast (PermanentStorageError) when credentials or the bucket are wrong."""

    @abstractmethod
    def put_file(self, key: str, path: Path, digest: FileDigest, content_type: str,
                 cache_control: str | None = None) -> None:
        """Store a file, overwriting; records `digest.sha256` as object metadata."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str, cache_control: str | None = None) -> None:
        """Store a small object, overwriting (manifests, pointers)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes | None:
        """The object's content, or None when it does not exist."""

    @abstractmethod
    def stat(self, key: str) -> ObjectStat | None:
        """Size (as stored), recorded sha256 and ETag; None when missing."""

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectStat]:
        """Every object under `prefix` (recursive); sha256 may be None here."""

    @abstractmethod
    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the immediate sub-folders of `prefix` (no trailing slash)."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Delete objects; missing ones are ignored."""

    def hash_object(self, key: str) -> FileDigest | None:
        """Download and hash an object (deep verification); None when missing."""
        data = self.get_bytes(key)
        return None if data is None else digest_bytes(data)

    def put_if_changed(self, key: str, path: Path, digest: FileDigest, content_type: str,
                       cache_control: str | None = None) -> bool:
        """Upload unless an object with the same size and sha256 is already there;
        True when it uploaded."""
        current = self.stat(key)
        if current is not None and current.size == digest.size and current.sha256 == digest.sha256:
            return False
        self.put_file(key, path, digest, content_type, cache_control)
        return True

    def close(self) -> None:
        """Release connections."""


def guess_content_type(name: str) -> str:
    """Content types the app's readers care about (JSON, TF.js shards, numpy, protobuf)."""
    suffix = Path(name).suffix.lower()
    return {
        ".json": "application/json",
        ".bin": "application/octet-stream",
        ".npy": "application/octet-stream",
        ".pb": "application/octet-stream",
        ".keras": "application/zip",
        ".joblib": "application/octet-stream",
        ".txt": "text/plain",
    }.get(suffix, "application/octet-stream")


def join_key(*parts: str) -> str:
    """'a', 'b/', '/c' -> 'a/b/c' (keys never start with '/')."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))

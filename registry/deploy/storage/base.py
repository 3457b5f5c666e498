"""The storage interface deployments are written through, and the error classes every
backend maps its native errors to.

Two kinds of failure matter to a deployment: transient ones (5xx, timeouts, connection
resets) are retried with exponential backoff; permanent ones (bad key, missing bucket,
object too large, any other 4xx) stop the sync at once, before anything is activated.
Backends raise `TransientStorageError` or a `PermanentStorageError` subclass and never
let a library exception through, so the deployer needs no backend-specific code.

`RetryPolicy` is the one retry policy for storage: no backend retries by itself (botocore's
retries are off, storage3/httpx have none); the deployer runs every storage call through it.
Also here, because every backend shares them: the object-key rule of Supabase Storage, the
Cache-Control each kind of object gets, and the owner tags of temporary files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

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


class InvalidObjectKey(PermanentStorageError):
    """An object key the storage server refuses (Supabase Storage's key rule)."""


# ------------------------------------------------------------------ object keys
# Supabase Storage (src/storage/limits.ts, isValidKey) accepts only these characters, ASCII only;
# anything else ('[', ']', '#', '%', non-ASCII ...) is refused with 400 InvalidKey, over REST
# and over S3 alike. The deployer checks every key against it before the first upload.
KEY_CHARACTERS = "A-Z a-z 0-9 _ / ! - . * ' ( ) space & $ @ = ; : + , ?"
_KEY_RE = re.compile(r"[A-Za-z0-9_/!\-.*'() &$@=;:+,?]+")


def invalid_key_characters(key: str) -> list[str]:
    """The characters of `key` Supabase Storage refuses, each once, in order of appearance."""
    bad: list[str] = []
    for ch in key:
        if not _KEY_RE.fullmatch(ch) and ch not in bad:
            bad.append(ch)
    return bad


def check_object_keys(keys: Mapping[str, Any]) -> None:
    """InvalidObjectKey naming every refused key (with its source, the mapping's value) and
    the characters at fault; nothing is sent before this passes."""
    bad = {key: invalid_key_characters(key) for key in keys}
    bad = {key: chars for key, chars in bad.items() if chars or not key}
    if not bad:
        return
    lines = [f"{key!r} (from {keys[key]}): {', '.join(repr(c) for c in chars) or 'empty'}"
             for key, chars in sorted(bad.items())[:10]]
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    raise InvalidObjectKey(f"{len(bad)} file name(s) cannot be stored in Supabase Storage, which accepts only ASCII "
                           f"{KEY_CHARACTERS} in object keys: {'; '.join(lines)}{more}. Rename the file(s) in the "
                           "bundle (nothing was uploaded)", 400, "InvalidKey")


# ------------------------------------------------------------------ Cache-Control
# One policy on every backend (S3 would store `no-cache` for an object sent without one):
# version files never change once written; the manifest rarely; the pointer moves.
CACHE_FILES_S = 3600
CACHE_MANIFEST_S = 60
CACHE_POINTER_S = 0


def cache_control(max_age_s: int) -> str:
    """The Cache-Control header value every backend stores, e.g. 'max-age=3600'."""
    return f"max-age={int(max_age_s)}"


DEFAULT_CACHE_CONTROL = cache_control(CACHE_FILES_S)


def max_age_of(value: str | None) -> int:
    """Seconds of a 'max-age=N' (or bare 'N') Cache-Control; the default policy otherwise."""
    match = re.search(r"(?:max-age=)?(\d+)", value or "")
    return int(match.group(1)) if match else CACHE_FILES_S


# ------------------------------------------------------------------ owners of temporary files
def owner_tag() -> str:
    """'<host>-<pid>' of this process, put into the names of its temporary files and folders
    so a later run can tell a dead run's leftovers from a live run's work."""
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
    return f"{host}-{os.getpid()}"


def owner_is_gone(tag: str) -> bool:
    """Whether the process named by an owner tag from this host has exited (other hosts'
    tags are never judged: False)."""
    host, _, pid = tag.rpartition("-")
    if host != owner_tag().rpartition("-")[0] or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


@dataclass
class ObjectStat:
    """What a backend knows about a stored object without downloading it.

    `sha256` comes from object metadata written at upload (S3 `x-amz-meta-sha256`,
    Supabase user metadata) or from hashing (local folder); None when unknown. The ETag is
    kept for information only: multipart and SSE-KMS ETags are not content hashes.
    `cache_control` comes from `stat`, `modified` from `list` (retention's age of a folder).
    """

    key: str
    size: int
    sha256: str | None = None
    etag: str | None = None
    cache_control: str | None = None
    modified: float | None = None  # epoch seconds of the last write, where the listing tells


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
    `backoff_s`, 2x, 4x ... capped at `max_backoff_s`. The one retry policy for storage."""

    attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 20.0

    def __post_init__(self) -> None:
        if int(self.attempts) < 1:
            raise ValueError(f"retry attempts={self.attempts} must be at least 1")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("retry backoff_s and max_backoff_s must be >= 0 seconds")

    @classmethod
    def coerce(cls, value: Any) -> "RetryPolicy":
        """A RetryPolicy from itself, a mapping, or any object with attempts/backoff_s/max_backoff_s
        (the deployment config's `storage.retry`, whatever type the config gives it)."""
        if isinstance(value, cls):
            return value
        if value is None:
            return cls()
        get = value.get if isinstance(value, Mapping) else (lambda k, d: getattr(value, k, d))
        return cls(int(get("attempts", 5)), float(get("backoff_s", 0.5)), float(get("max_backoff_s", 20.0)))

    def call(self, what: str, fn: Callable[[], T], log: logging.Logger | None = None, *,
             retry_on: tuple[type[BaseException], ...] = (TransientStorageError,),
             attempts: int | None = None) -> T:
        """Run `fn`, retrying `retry_on` (transient storage errors); anything else passes at once.
        `attempts` overrides the policy's count for one call (a re-upload after a failed verify)."""
        from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        tries = int(attempts or self.attempts)

        def before_sleep(state: Any) -> None:
            if log is not None:
                exc = state.outcome.exception()
                log.warning("%s failed (attempt %d/%d): %s; retrying in %.1fs", what, state.attempt_number,
                            tries, exc, state.next_action.sleep if state.next_action else 0.0)

        retrying = Retrying(
            stop=stop_after_attempt(tries),
            wait=wait_exponential(multiplier=self.backoff_s, min=self.backoff_s, max=self.max_backoff_s),
            retry=retry_if_exception_type(retry_on),
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
        """Store a file, overwriting; records `digest.sha256` as object metadata. Cache-Control
        is a header value ('max-age=N'); None means DEFAULT_CACHE_CONTROL."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str, cache_control: str | None = None) -> None:
        """Store a small object, overwriting (manifests, pointers); Cache-Control as put_file."""

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

    def sweep_incomplete(self, prefix: str, started_before: float) -> int:
        """Remove what interrupted writes under `prefix` left behind (S3: multipart uploads
        initiated before `started_before`, epoch seconds; local: temporary files of dead
        processes); the number removed. Nothing to do where each write is one request."""
        return 0

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

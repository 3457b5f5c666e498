"""State and errors of the Supabase Storage imitation (tests/support/storage_server.py):
errors rendered as the real server renders them, buckets and objects on disk (the process can
be SIGKILLed and restarted on the same root), and the fault switches tests flip over HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import threading
import uuid
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

RLS_MESSAGE = "new row violates row-level security policy"


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _http_date(iso: str) -> str:
    return format_datetime(datetime.fromisoformat(iso.replace("Z", "+00:00")), usegmt=True)


# ------------------------------------------------------------------ errors, as the server renders them
class StorageError(Exception):
    """A storage error: `status` travels in the body; `error` is what the body names it."""

    def __init__(self, status: str, code: str, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.error = status, code, message, error or code

    def http_status(self) -> int:
        return {"500": 500, "544": 544, "413": 413}.get(self.status, 400)

    def body(self) -> dict:
        return {"statusCode": self.status, "error": self.error, "message": self.message}


class RouteNotFound(StorageError):
    """fastify's own 404: a real HTTP 404 and a numeric statusCode."""

    def __init__(self, method: str, path: str) -> None:
        super().__init__("404", "Not Found", f"Route {method}:{path} not found", "Not Found")

    def http_status(self) -> int:
        return 404

    def body(self) -> dict:
        return {"statusCode": 404, "error": "Not Found", "message": self.message}


def no_such_bucket() -> StorageError:
    return StorageError("404", "NoSuchBucket", "Bucket not found", "Bucket not found")


def no_such_key() -> StorageError:
    return StorageError("404", "NoSuchKey", "Object not found", "not_found")


def access_denied(message: str = RLS_MESSAGE) -> StorageError:
    return StorageError("403", "AccessDenied", message, "Unauthorized")


# ------------------------------------------------------------------ state on disk
class Store:
    """Buckets and objects on disk: meta JSON per object (the commit point) + data files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("buckets", "meta", "data", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    def _atomic(self, dest: Path, data: bytes) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)

    def bucket(self, bucket_id: str) -> dict | None:
        p = self.root / "buckets" / f"{bucket_id}.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def buckets(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "buckets").glob("*.json"))]

    def put_bucket(self, doc: dict) -> None:
        self._atomic(self.root / "buckets" / f"{doc['id']}.json", json.dumps(doc).encode())

    def drop_bucket(self, bucket_id: str) -> None:
        (self.root / "buckets" / f"{bucket_id}.json").unlink(missing_ok=True)

    # objects: meta/<bucket>/d_<folder>/.../f_<name>.json
    def _meta_path(self, bucket: str, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            raise StorageError("400", "InvalidKey", f"Invalid key: {key}")
        return self.root.joinpath("meta", bucket, *[f"d_{p}" for p in parts[:-1]], f"f_{parts[-1]}.json")

    def get(self, bucket: str, key: str) -> dict | None:
        p = self._meta_path(bucket, key)
        return json.loads(p.read_text()) if p.is_file() else None

    def data_path(self, obj: dict) -> Path:
        return self.root / "data" / obj["version"]

    def put(self, bucket: str, key: str, data_file: Path, size: int, etag: str, mimetype: str, cache_control: str,
            user_metadata: Any) -> dict:
        with self.lock:
            old = self.get(bucket, key)
            version = str(uuid.uuid4())
            os.replace(data_file, self.root / "data" / version)
            now = _now_iso()
            obj = {
                "id": old["id"] if old else str(uuid.uuid4()), "name": key, "bucket_id": bucket, "owner": None,
                "version": version, "created_at": old["created_at"] if old else now, "updated_at": now,
                "last_accessed_at": now, "user_metadata": user_metadata,
                "metadata": {"eTag": etag, "size": size, "mimetype": mimetype, "cacheControl": cache_control,
                             "lastModified": now, "contentLength": size, "httpStatusCode": 200},
            }
            self._atomic(self._meta_path(bucket, key), json.dumps(obj).encode())  # the commit point
            if old:
                (self.root / "data" / old["version"]).unlink(missing_ok=True)
            return obj

    def receive(self, request: Any, bucket_id: str, key: str, limit: int | None) -> dict:
        """Stream the body (multipart `file` field or raw) to disk, refusing it past `limit`."""
        from werkzeug.formparser import parse_form_data

        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        md5, size = hashlib.md5(), 0
        content_type = request.headers.get("Content-Type", "")
        cache_control, user_metadata = request.headers.get("cache-control") or "no-cache", None
        try:
            with os.fdopen(fd, "wb") as out:
                if content_type.startswith("multipart/form-data"):
                    _stream, form, files = parse_form_data(request.environ, max_form_memory_size=1 << 20)
                    part = files.get("file")
                    if part is None:
                        raise StorageError("400", "InvalidRequest", "No content provided")
                    mimetype = part.mimetype or "application/octet-stream"
                    if form.get("cacheControl"):
                        cache_control = f"max-age={form.get('cacheControl')}"
                    if form.get("metadata"):
                        user_metadata = json.loads(form.get("metadata"))
                    source = part.stream
                else:
                    mimetype = content_type or "application/octet-stream"
                    if request.headers.get("x-metadata"):
                        user_metadata = json.loads(base64.b64decode(request.headers["x-metadata"]))
                    source = request.stream
                while chunk := source.read(1 << 20):
                    size += len(chunk)
                    if limit is not None and size > limit:
                        raise StorageError("413", "EntityTooLarge", "The object exceeded the maximum allowed size",
                                           "Payload too large")
                    md5.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            return self.put(bucket_id, key, Path(tmp), size, md5.hexdigest(), mimetype, cache_control, user_metadata)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def delete(self, bucket: str, key: str) -> dict | None:
        with self.lock:
            try:
                obj = self.get(bucket, key)
            except StorageError:  # a key that cannot exist
                return None
            if obj is None:
                return None
            self._meta_path(bucket, key).unlink(missing_ok=True)
            (self.root / "data" / obj["version"]).unlink(missing_ok=True)
            return obj

    def keys(self, bucket: str) -> list[str]:
        base = self.root / "meta" / bucket
        return [json.loads(p.read_text())["name"] for p in base.rglob("f_*.json")] if base.is_dir() else []

    def level(self, bucket: str, prefix: str) -> tuple[list[dict], list[dict]]:
        """One folder level under prefix, as storage.search returns it: (folders, files)."""
        parts = [p for p in prefix.split("/") if p]
        base = self.root.joinpath("meta", bucket, *[f"d_{p}" for p in parts])
        folders: list[dict] = []
        files: list[dict] = []
        if not base.is_dir():
            return folders, files
        for entry in base.iterdir():
            if entry.is_dir() and entry.name.startswith("d_"):
                if any(entry.rglob("f_*.json")):
                    folders.append({"name": entry.name[2:], "id": None, "updated_at": None, "created_at": None,
                                    "last_accessed_at": None, "metadata": None})
            elif entry.name.startswith("f_") and entry.name.endswith(".json"):
                obj = json.loads(entry.read_text())
                files.append({"name": entry.name[2:-5], "id": obj["id"], "updated_at": obj["updated_at"],
                              "created_at": obj["created_at"], "last_accessed_at": obj["last_accessed_at"],
                              "metadata": obj["metadata"]})
        return folders, files


class Faults:
    """Switches the tests flip over HTTP."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: list[dict] = []
        self.crash_on_upload: int | None = None
        self.upload_delay_s = 0.0
        self.stats: dict[str, int] = {}
        self.uploaded: list[str] = []
        self.injected = 0

    def hit(self, route: str) -> StorageError | None:
        with self.lock:
            self.stats[route] = self.stats.get(route, 0) + 1
            for rule in self.rules:
                if rule.get("count", 0) > 0 and rule.get("route", "any") in (route, "any"):
                    rule["count"] -= 1
                    self.injected += 1
                    status = str(rule.get("status", "500"))
                    if status == "500":
                        return StorageError("500", "InternalError", "Internal Server Error", "internal")
                    if status == "503":  # database connection limit: HTTP 400, the status in the body
                        return StorageError("503", "DatabaseConnectionLimit", "The database has reached its maximum "
                                            "number of connections. Please try again later.")
                    if status == "544":
                        return StorageError("544", "DatabaseTimeout", "The connection to the database timed out")
                    return StorageError(status, rule.get("code", "InvalidRequest"), rule.get("message", "injected"))
        return None

    def crash_now(self) -> tuple[bool, float]:
        """(whether this upload kills the server, the upload delay)."""
        with self.lock:
            crash = self.crash_on_upload is not None and self.crash_on_upload <= 1
            if self.crash_on_upload is not None:
                self.crash_on_upload -= 1
            return crash, self.upload_delay_s

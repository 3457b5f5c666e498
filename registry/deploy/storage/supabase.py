"""Supabase Storage's REST API through storage3 (the storage client inside supabase-py).

URL and key come from the environment: SUPABASE_URL (the project URL; the gateway serves
storage under `/storage/v1/`, which is appended unless the URL already holds it) or
TOWEROPS_SUPABASE_STORAGE_URL (a storage server's own base URL, e.g. self-hosted without
the gateway), and SUPABASE_SERVICE_ROLE_KEY (the service-role key: private buckets, no
row-level-security policies needed). Requests carry `Authorization: Bearer <key>` and
`apikey: <key>`, as supabase-py sends them.

Objects are uploaded with `x-upsert: true` and user metadata `{"sha256", "size"}`, read
back through `GET /object/info/{bucket}/{path}` for verification.

Errors, as the storage server (supabase/storage v1.11) sends them: a JSON body
`{"statusCode": "404", "error": "not_found", "message": "Object not found"}` (no `code`; storage3
hands `error` over as the exception's code) with HTTP status 400 for most client errors (the real
status is the body's `statusCode`), 413 over a size limit, 500 for internal errors, 544 for
database timeouts. An unknown route is fastify's 404 `{"statusCode": 404, "error": "Not Found",
"message": "Route GET:/... not found"}` (what SUPABASE_URL pointing at a storage server without
the gateway gets); the API gateway answers a bad `apikey` with 401 `{"message": "Invalid API
key"}`. We classify on the body's statusCode first; "bucket does not exist" only for the
server's own "Bucket not found".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from ml.settings import get_settings
from registry.deploy.storage.base import (
    KEY_CHARACTERS,
    BucketNotFound,
    FileDigest,
    InvalidObjectKey,
    ObjectStat,
    ObjectTooLarge,
    PermanentStorageError,
    StorageAuthError,
    StorageBackend,
    TransientStorageError,
    max_age_of,
)

_AUTH_CODES = {"InvalidJWT", "AccessDenied", "Unauthorized", "InvalidSignature", "ExpiredToken",
               "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_TRANSIENT_CODES = {"SlowDown", "DatabaseTimeout", "DatabaseConnectionLimit", "DatabaseReadOnly", "LockTimeout",
                    "too_many_connections", "acquiring_lock_timeout", "Aborted"}
_MISSING = {"not_found", "NoSuchKey"}
_LIST_PAGE = 1000
_DELETE_BATCH = 1000  # the server's `prefixes` maxItems


def _epoch(stamp: Any) -> float | None:
    """Epoch seconds of the server's ISO 8601 timestamps (None when absent or unreadable)."""
    from datetime import datetime

    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def storage_base_url(url: str) -> str:
    """Storage base URL (with trailing slash) from a project URL or a storage URL."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"Supabase URL {url!r} is not an http(s) URL; set SUPABASE_URL to the project URL, "
                         "e.g. https://<project-ref>.supabase.co")
    path = parts.path.rstrip("/")
    if "/storage/v1" not in path:
        path = path + "/storage/v1"
    return f"{parts.scheme}://{parts.netloc}{path}/"


def _refuse_public_key(key: str) -> None:
    """A public key (anon JWT, sb_publishable_...) cannot write a private bucket, and the server
    would only answer 'Bucket not found' (row-level security hides it): say so up front."""
    import base64

    if key.startswith("sb_publishable_"):
        raise StorageAuthError("SUPABASE_SERVICE_ROLE_KEY holds a publishable (public) key; use the project's "
                               "secret / service-role key (Project Settings → API keys)")
    parts = key.split(".")
    if len(parts) != 3:
        return  # not a JWT (e.g. sb_secret_...): the server decides
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return
    if not isinstance(payload, dict):
        return
    role = payload.get("role")
    if not role:  # the server treats it as no one: private buckets answer "Bucket not found"
        raise StorageAuthError("SUPABASE_SERVICE_ROLE_KEY holds a JWT without a role claim, which Supabase Storage "
                               "lets see no private bucket; use the project's service-role key (Project Settings → "
                               "API keys), whose role is service_role")
    if role != "service_role":
        raise StorageAuthError(f"SUPABASE_SERVICE_ROLE_KEY holds a key with role {role!r}; deployments need the "
                               "service-role key (Project Settings → API keys), which bypasses row-level security")


class SupabaseStorageBackend(StorageBackend):
    """Objects in a Supabase Storage bucket via storage3's SyncStorageClient."""

    kind = "supabase"

    def __init__(self, bucket: str, url: str | None = None, key: str | None = None, storage_url: str | None = None,
                 timeout_s: float = 120.0, connect_timeout_s: float = 10.0) -> None:
        if not bucket:
            raise ValueError("bucket name is empty; set supabase.storage_bucket (e.g. model-artifacts)")
        self.bucket = bucket
        storage_url = storage_url or get_settings().supabase_storage_url
        url = url or os.environ.get("SUPABASE_URL")
        if storage_url:
            parts = urlsplit(storage_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"storage URL {storage_url!r} is not an http(s) URL")
            self.base_url = storage_url.rstrip("/") + "/"
        elif url:
            self.base_url = storage_base_url(url)
        else:
            raise ValueError("Supabase backend needs SUPABASE_URL (the project URL, https://<ref>.supabase.co) "
                             "or TOWEROPS_SUPABASE_STORAGE_URL; set one, or use storage.backend: local")
        self._key = key or os.environ.get("SUPABASE_SERVICE_ROLE_KEY") or os.environ.get("SUPABASE_KEY")
        if not self._key:
            raise ValueError("Supabase backend needs the service-role key in SUPABASE_SERVICE_ROLE_KEY "
                             "(Project Settings → API keys); it is read from the environment only")
        _refuse_public_key(self._key)
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self._client: Any = None
        self._bucket_api: Any = None
        self.warned_no_metadata = False

    # ------------------------------------------------------------------ plumbing
    @property
    def bucket_api(self) -> Any:
        if self._bucket_api is None:
            import httpx
            from storage3 import SyncStorageClient

            headers = {"apikey": self._key, "Authorization": f"Bearer {self._key}"}
            http = httpx.Client(headers=headers, follow_redirects=True,
                                timeout=httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s),
                                limits=httpx.Limits(max_connections=32, max_keepalive_connections=16))
            self._client = SyncStorageClient(self.base_url, headers, http_client=http)
            self._bucket_api = self._client.from_(self.bucket)
        return self._bucket_api

    @property
    def client(self) -> Any:
        _ = self.bucket_api
        return self._client

    def describe(self) -> str:
        return f"supabase storage bucket {self.bucket!r} at {self.base_url}"

    def _classify(self, exc: BaseException, what: str, key: str | None) -> BaseException:
        import httpx
        from storage3.exceptions import StorageApiError

        where = f"{what} {self.bucket}/{key or ''} at {self.base_url}"
        if isinstance(exc, StorageApiError):
            http_status, body = None, None
            cause = exc.__cause__ or exc.__context__
            while cause is not None and http_status is None:
                response = getattr(cause, "response", None)
                http_status = getattr(response, "status_code", None)
                body = getattr(response, "text", None)
                cause = cause.__cause__ or cause.__context__
            try:
                status = int(str(exc.status))
            except ValueError:
                status = http_status or 0
            code = str(exc.code or "")
            message = str(exc.message)
            if message.startswith("Unable to parse error message") and body:
                # not a storage error body: the API gateway's {"message": ...} or an HTML error page
                try:
                    message = str(json.loads(body).get("message") or body)
                except (ValueError, AttributeError):
                    message = body.strip()[:200]
                code = "gateway"
            detail = f"{status} {code}: {message}"
            if status >= 500 or status in (408, 429) or (http_status or 0) >= 500 or code in _TRANSIENT_CODES:
                return TransientStorageError(f"{where}: {detail}")
            if status in (401, 403) or code in _AUTH_CODES:
                return StorageAuthError(f"{where}: Supabase Storage refused the key ({detail}); set "
                                        "SUPABASE_SERVICE_ROLE_KEY to the project's service-role key (Project "
                                        "Settings → API keys) and SUPABASE_URL to the same project", status, code)
            if status == 404 and message.startswith("Route ") and message.endswith("not found"):
                return PermanentStorageError(
                    f"{where}: {detail}: no Storage API at this URL. SUPABASE_URL must be the project URL (the "
                    "gateway serves storage under /storage/v1/); for a storage server without the gateway set "
                    "TOWEROPS_SUPABASE_STORAGE_URL to its own base URL instead", status, "route_not_found")
            if status == 404 and (code in ("NoSuchBucket", "Bucket not found") or message == "Bucket not found"):
                return BucketNotFound(f"{where}: bucket {self.bucket!r} does not exist; create it (Storage → New "
                                      "bucket, private) or set supabase.storage_bucket", status, code)
            if code == "InvalidKey":
                return InvalidObjectKey(f"{where}: {detail}; Supabase Storage accepts only ASCII {KEY_CHARACTERS} "
                                        "in object keys: rename the file", status, code)
            if status == 413 or code in ("EntityTooLarge", "Payload too large"):
                return ObjectTooLarge(f"{where}: {detail}; raise the bucket's file size limit (and the project's "
                                      "global upload limit), or deploy through the S3 backend (multipart)",
                                      status, code)
            return PermanentStorageError(f"{where}: {detail}", status, code)
        if isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError,
                            ConnectionError, TimeoutError)):
            return TransientStorageError(f"{where}: {type(exc).__name__}: {exc}")
        if isinstance(exc, httpx.HTTPError):
            return TransientStorageError(f"{where}: {type(exc).__name__}: {exc}")
        return exc

    def _call(self, what: str, key: str | None, fn, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - mapped below
            mapped = self._classify(exc, what, key)
            if mapped is exc:
                raise
            raise mapped from None

    @staticmethod
    def _is_missing(exc: BaseException) -> bool:
        from storage3.exceptions import StorageApiError

        return (isinstance(exc, StorageApiError) and str(exc.status) == "404"
                and str(exc.code) in _MISSING)

    # ------------------------------------------------------------------ interface
    def check(self) -> None:
        """GET /bucket/{id}: a wrong key or a missing bucket fails here, before any upload."""
        self._call("open bucket", None, self.client.get_bucket, self.bucket)

    def _upload(self, key: str, file: Any, size: int, sha256: str, content_type: str,
                cache_control: str | None) -> None:
        # storage3 sends the seconds as the form field `cacheControl`; the server stores `max-age=<seconds>`,
        # the header value the S3 backend sends: one Cache-Control on both
        options = {"content-type": content_type, "upsert": "true",
                   "cache-control": str(max_age_of(cache_control)),
                   "metadata": {"sha256": sha256, "size": size}}
        self._call("upload", key, self.bucket_api.upload, key, file, options)

    def put_file(self, key: str, path: Path, digest: FileDigest, content_type: str,
                 cache_control: str | None = None) -> None:
        self._upload(key, Path(path), digest.size, digest.sha256, content_type, cache_control)

    def put_bytes(self, key: str, data: bytes, content_type: str, cache_control: str | None = None) -> None:
        import hashlib

        self._upload(key, data, len(data), hashlib.sha256(data).hexdigest(), content_type, cache_control)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self.bucket_api.download(key)
        except Exception as exc:  # noqa: BLE001
            if self._is_missing(exc):
                return None
            mapped = self._classify(exc, "download", key)
            if mapped is exc:
                raise
            raise mapped from None

    def stat(self, key: str) -> ObjectStat | None:
        try:
            info = self.bucket_api.info(key)
        except Exception as exc:  # noqa: BLE001
            if self._is_missing(exc):
                return None
            mapped = self._classify(exc, "stat", key)
            if mapped is exc:
                raise
            raise mapped from None
        size = info.get("size")
        if size is None:
            raise PermanentStorageError(f"stat {self.bucket}/{key}: the storage server's object info has no size "
                                        f"(got keys {sorted(info)}); supabase/storage v1.x is required")
        user_meta = info.get("metadata") or info.get("user_metadata") or {}
        if isinstance(user_meta, str):
            try:
                user_meta = json.loads(user_meta)
            except ValueError:
                user_meta = {}
        etag = info.get("etag") or info.get("eTag")
        return ObjectStat(key, int(size), (user_meta or {}).get("sha256"), etag,
                          cache_control=info.get("cache_control") or info.get("cacheControl"))

    def _list_page(self, prefix: str, offset: int) -> list[dict]:
        return self._call("list", prefix, self.bucket_api.list, prefix,
                          {"limit": _LIST_PAGE, "offset": offset, "sortBy": {"column": "name", "order": "asc"}})

    def _entries(self, prefix: str) -> list[dict]:
        out, offset = [], 0
        while True:
            page = self._list_page(prefix, offset)
            out.extend(page)
            if len(page) < _LIST_PAGE:
                return out
            offset += len(page)

    def list(self, prefix: str) -> list[ObjectStat]:
        prefix = prefix.strip("/")
        out: list[ObjectStat] = []
        for entry in self._entries(prefix):
            name = entry.get("name") or ""
            key = f"{prefix}/{name}" if prefix else name
            if entry.get("id") is None:  # a folder
                out.extend(self.list(key))
            else:
                meta = entry.get("metadata") or {}
                etag = meta.get("eTag")
                out.append(ObjectStat(key, int(meta.get("size") or 0), None, etag,
                                      modified=_epoch(entry.get("updated_at") or meta.get("lastModified"))))
        return out

    def list_dirs(self, prefix: str) -> list[str]:
        return sorted(e["name"] for e in self._entries(prefix.strip("/")) if e.get("id") is None and e.get("name"))

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for i in range(0, len(keys), _DELETE_BATCH):
            self._call("delete", keys[i], self.bucket_api.remove, keys[i:i + _DELETE_BATCH])

    def close(self) -> None:
        if self._client is not None:
            self._client.session.close()
            self._client = self._bucket_api = None

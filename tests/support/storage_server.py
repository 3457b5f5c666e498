"""A small loopback implementation of the Supabase Storage REST API (supabase/storage v1.x),
for tests: the routes storage3 uses, with the real server's auth and error conventions.

Faithful to the real server where the client can tell:
- routes at the root (`/bucket`, `/object/...`) and behind a gateway prefix `/storage/v1/`,
  where, as Supabase's API gateway does, a missing or unknown `apikey` gets 401
  `{"message": "Invalid API key", ...}`;
- `Authorization: Bearer <JWT>` verified with the JWT secret (HS256); the `service_role`
  role bypasses row-level security, other roles see nothing and may write nothing;
- errors rendered as `{"statusCode": "<status>", "code", "error", "message"}` with HTTP status
  400 for every non-500 error (the status travels in the body), 500 for internal errors;
- uploads: multipart `file` + `cacheControl` + `metadata` (user metadata JSON) fields, or a raw
  body with `x-metadata` (base64 JSON); `x-upsert: true` to overwrite, else 409 Duplicate;
  bucket `file_size_limit` → 413 EntityTooLarge;
- `GET /object/info/...` returns `{id, name, version, bucket_id, size, content_type,
  cache_control, etag, metadata, last_modified, created_at}`; `POST /object/list/{bucket}`
  returns one folder level (folders with `id: null`), sorted, with limit/offset.

State lives on disk (`--root`), written atomically, so the process can be SIGKILLed and
restarted on the same root and port, like a real server whose database survives.

Test switches (no auth, loopback only): `POST /__admin/faults` with
`{"rules": [{"route": "upload", "count": 2, "status": "500"}], "crash_on_upload": 3,
"upload_delay_s": 0.2}`; `GET /__admin/stats`; `POST /__admin/reset`.

    python tests/support/storage_server.py --port 54321 --root /tmp/st --jwt-secret SECRET \
        --anon-key <jwt> --service-key <jwt>
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

GATEWAY_PREFIX = "/storage/v1"
RLS_MESSAGE = "new row violates row-level security policy"


def make_jwt(secret: str, role: str, ttl_s: int = 3600) -> str:
    """A Supabase-style API key (JWT signed with the project's JWT secret)."""
    import jwt

    now = int(time.time())
    return jwt.encode({"iss": "supabase-test", "role": role, "iat": now, "exp": now + ttl_s}, secret, "HS256")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class StorageError(Exception):
    def __init__(self, status: str, code: str, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.error = status, code, message, error or code

    def http_status(self) -> int:
        return 500 if self.status == "500" else (544 if self.status == "544" else 400)

    def body(self) -> dict:
        return {"statusCode": self.status, "code": self.code, "error": self.error, "message": self.message}


def no_such_bucket() -> StorageError:
    return StorageError("404", "NoSuchBucket", "Bucket not found", "Bucket not found")


def no_such_key() -> StorageError:
    return StorageError("404", "NoSuchKey", "Object not found", "not_found")


class Store:
    """Buckets and objects on disk: meta JSON per object (the commit point) + data files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("buckets", "meta", "data", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    # -- atomic file helpers
    def _atomic(self, dest: Path, data: bytes) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)

    # -- buckets
    def bucket(self, bucket_id: str) -> dict | None:
        p = self.root / "buckets" / f"{bucket_id}.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def buckets(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "buckets").glob("*.json"))]

    def put_bucket(self, doc: dict) -> None:
        self._atomic(self.root / "buckets" / f"{doc['id']}.json", json.dumps(doc).encode())

    def drop_bucket(self, bucket_id: str) -> None:
        (self.root / "buckets" / f"{bucket_id}.json").unlink(missing_ok=True)

    # -- objects: meta/<bucket>/d_<folder>/.../f_<name>.json
    def _meta_path(self, bucket: str, key: str) -> Path:
        parts = [p for p in key.split("/")]
        if not key or any(p in ("", ".", "..") for p in parts):
            raise StorageError("400", "InvalidKey", f"Invalid key: {key}")
        return self.root.joinpath("meta", bucket, *[f"d_{p}" for p in parts[:-1]], f"f_{parts[-1]}.json")

    def get(self, bucket: str, key: str) -> dict | None:
        p = self._meta_path(bucket, key)
        return json.loads(p.read_text()) if p.is_file() else None

    def data_path(self, obj: dict) -> Path:
        return self.root / "data" / obj["version"]

    def put(self, bucket: str, key: str, data_file: Path, size: int, etag: str, mimetype: str, cache_control: str,
            user_metadata: Any, owner: str | None) -> dict:
        with self.lock:
            old = self.get(bucket, key)
            version = str(uuid.uuid4())
            os.replace(data_file, self.root / "data" / version)
            now = _now_iso()
            obj = {
                "id": old["id"] if old else str(uuid.uuid4()), "name": key, "bucket_id": bucket, "owner": owner,
                "version": version, "created_at": old["created_at"] if old else now, "updated_at": now,
                "last_accessed_at": now, "user_metadata": user_metadata,
                "metadata": {"eTag": etag, "size": size, "mimetype": mimetype, "cacheControl": cache_control,
                             "lastModified": now, "contentLength": size, "httpStatusCode": 200},
            }
            self._atomic(self._meta_path(bucket, key), json.dumps(obj).encode())  # the commit point
            if old:
                (self.root / "data" / old["version"]).unlink(missing_ok=True)
            return obj

    def delete(self, bucket: str, key: str) -> dict | None:
        with self.lock:
            obj = self.get(bucket, key)
            if obj is None:
                return None
            self._meta_path(bucket, key).unlink(missing_ok=True)
            (self.root / "data" / obj["version"]).unlink(missing_ok=True)
            return obj

    def count(self, bucket: str) -> int:
        base = self.root / "meta" / bucket
        return sum(1 for _ in base.rglob("f_*.json")) if base.is_dir() else 0

    def level(self, bucket: str, prefix: str) -> list[dict]:
        """One folder level under prefix, as storage.search returns it."""
        parts = [p for p in prefix.split("/") if p]
        base = self.root.joinpath("meta", bucket, *[f"d_{p}" for p in parts])
        if not base.is_dir():
            return []
        out = []
        for entry in base.iterdir():
            if entry.is_dir() and entry.name.startswith("d_"):
                if any(entry.rglob("f_*.json")):
                    out.append({"name": entry.name[2:], "id": None, "updated_at": None, "created_at": None,
                                "last_accessed_at": None, "metadata": None})
            elif entry.name.startswith("f_") and entry.name.endswith(".json"):
                obj = json.loads(entry.read_text())
                out.append({"name": entry.name[2:-5], "id": obj["id"], "updated_at": obj["updated_at"],
                            "created_at": obj["created_at"], "last_accessed_at": obj["last_accessed_at"],
                            "metadata": obj["metadata"]})
        return out


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


def create_app(root: Path, jwt_secret: str, api_keys: set[str], faults: Faults | None = None):
    """The WSGI app (werkzeug)."""
    import jwt as pyjwt
    from werkzeug.formparser import parse_form_data
    from werkzeug.wrappers import Request, Response

    store = Store(root)
    faults = faults or Faults()

    def json_response(doc: Any, status: int = 200, headers: dict | None = None) -> Response:
        return Response(json.dumps(doc), status=status, mimetype="application/json", headers=headers)

    def fail(err: StorageError) -> Response:
        return json_response(err.body(), err.http_status())

    def auth(request: Request, allow_invalid: bool = False) -> str:
        """The JWT's role; AccessDenied (403 in the body) when the token does not verify, or
        role anon on the routes the real server marks `allowInvalidJwt`."""
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        try:
            payload = pyjwt.decode(token, jwt_secret, algorithms=["HS256"], options={"verify_aud": False})
        except pyjwt.PyJWTError as exc:
            if allow_invalid:
                return "anon"
            # the messages of jsonwebtoken, which the real server uses
            message = ("jwt must be provided" if not token else
                       "invalid signature" if isinstance(exc, pyjwt.InvalidSignatureError) else
                       "jwt expired" if isinstance(exc, pyjwt.ExpiredSignatureError) else "jwt malformed")
            raise StorageError("403", "AccessDenied", message, "Unauthorized") from None
        return str(payload.get("role", "anon"))

    def bucket_or_404(bucket_id: str, role: str) -> dict:
        b = store.bucket(bucket_id)
        if b is None or role != "service_role":  # RLS on storage.buckets hides them from other roles
            raise no_such_bucket()
        return b

    def admin(request: Request, path: str) -> Response:
        if path == "/__admin/faults" and request.method == "POST":
            doc = request.get_json(force=True) or {}
            with faults.lock:
                faults.rules = [dict(r) for r in doc.get("rules", [])]
                faults.crash_on_upload = doc.get("crash_on_upload")
                faults.upload_delay_s = float(doc.get("upload_delay_s", 0.0))
            return json_response({"ok": True})
        if path == "/__admin/stats":
            with faults.lock:
                return json_response({"requests": dict(faults.stats), "uploaded": list(faults.uploaded),
                                      "injected": faults.injected, "pid": os.getpid()})
        if path == "/__admin/reset" and request.method == "POST":
            with faults.lock:
                faults.rules, faults.crash_on_upload, faults.upload_delay_s = [], None, 0.0
                faults.stats, faults.uploaded, faults.injected = {}, [], 0
            return json_response({"ok": True})
        return json_response({"message": "no such admin route"}, 404)

    def upload(request: Request, bucket_id: str, key: str, role: str, update: bool) -> Response:
        b = bucket_or_404(bucket_id, "service_role")
        if role != "service_role":
            raise StorageError("403", "AccessDenied", RLS_MESSAGE, "Unauthorized")
        upsert = request.headers.get("x-upsert", "").lower() == "true"
        existing = store.get(bucket_id, key)
        if update and existing is None:
            raise no_such_key()
        if not update and existing is not None and not upsert:
            raise StorageError("409", "KeyAlreadyExists", "The resource already exists", "Duplicate")
        with faults.lock:
            crash = faults.crash_on_upload is not None and faults.crash_on_upload <= 1
            if faults.crash_on_upload is not None:
                faults.crash_on_upload -= 1
            delay = faults.upload_delay_s
        if crash:  # read part of the body, then die like a killed server (no response, connection reset)
            length = int(request.headers.get("Content-Length") or 0)
            request.stream.read(max(1, length // 2))
            os.kill(os.getpid(), signal.SIGKILL)
        if delay:
            time.sleep(delay)
        limit = b.get("file_size_limit")
        fd, tmp = tempfile.mkstemp(dir=root / "tmp")
        sha_md5, size = hashlib.md5(), 0
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
                    if limit is not None and size > int(limit):
                        raise StorageError("413", "EntityTooLarge", "The object exceeded the maximum allowed size",
                                           "Payload too large")
                    sha_md5.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            obj = store.put(bucket_id, key, Path(tmp), size, f'"{sha_md5.hexdigest()}"', mimetype, cache_control,
                            user_metadata, "service_role")
        finally:
            Path(tmp).unlink(missing_ok=True)
        with faults.lock:
            faults.uploaded.append(f"{bucket_id}/{key}")
        return json_response({"Key": f"{bucket_id}/{key}", "id": obj["id"]})

    def serve_object(bucket_id: str, key: str, role: str, head: bool) -> Response:
        bucket_or_404(bucket_id, role)
        obj = store.get(bucket_id, key)
        if obj is None or role != "service_role":
            raise no_such_key()
        m = obj["metadata"]
        headers = {"ETag": m["eTag"], "Cache-Control": m["cacheControl"], "Last-Modified": m["lastModified"],
                   "Content-Length": str(m["size"])}
        if head:
            return Response(b"", status=200, mimetype=m["mimetype"], headers=headers)
        data = store.data_path(obj).read_bytes()
        return Response(data, status=200, mimetype=m["mimetype"], headers=headers)

    def info(bucket_id: str, key: str, role: str) -> Response:
        bucket_or_404(bucket_id, role)
        obj = store.get(bucket_id, key)
        if obj is None:
            raise no_such_key()
        m = obj["metadata"]
        return json_response({"id": obj["id"], "name": obj["name"], "version": obj["version"],
                              "bucket_id": bucket_id, "size": m["size"], "content_type": m["mimetype"],
                              "cache_control": m["cacheControl"], "etag": m["eTag"], "metadata": obj["user_metadata"],
                              "last_modified": obj["updated_at"], "created_at": obj["created_at"]},
                             headers={"ETag": m["eTag"], "Cache-Control": "no-cache"})

    def list_objects(request: Request, bucket_id: str, role: str) -> Response:
        bucket_or_404(bucket_id, role)
        body = request.get_json(force=True, silent=True) or {}
        if "prefix" not in body:
            raise StorageError("400", "InvalidRequest", "body must have required property 'prefix'")
        limit, offset = int(body.get("limit") or 100), int(body.get("offset") or 0)
        sort = body.get("sortBy") or {}
        column, order = sort.get("column") or "name", (sort.get("order") or "asc").lower()
        search = (body.get("search") or "").lower()
        entries = [e for e in store.level(bucket_id, body["prefix"]) if e["name"].lower().startswith(search)]
        entries.sort(key=lambda e: (e.get(column) or "") if column != "name" else e["name"], reverse=order == "desc")
        return json_response(entries[offset:offset + limit])

    def dispatch(request: Request, path: str) -> Response:
        method = request.method
        parts = [p for p in path.split("/") if p != ""]
        allow_invalid = parts[:1] == ["object"] and parts[1:2] != ["authenticated"] and (
            (parts[1:2] == ["info"] and parts[2:3] != ["authenticated"]) or method == "HEAD")
        role = auth(request, allow_invalid)
        if parts[:1] == ["bucket"]:
            err = faults.hit("bucket")
            if err:
                raise err
            if len(parts) == 1 and method == "GET":
                return json_response(store.buckets() if role == "service_role" else [])
            if len(parts) == 1 and method == "POST":
                if role != "service_role":
                    raise StorageError("403", "AccessDenied", RLS_MESSAGE, "Unauthorized")
                doc = request.get_json(force=True) or {}
                bid = doc.get("id") or doc.get("name")
                if not bid:
                    raise StorageError("400", "InvalidBucketName", "Bucket name invalid", "Invalid Input")
                if store.bucket(bid):
                    raise StorageError("409", "BucketAlreadyExists", "The resource already exists", "Duplicate")
                now = _now_iso()
                store.put_bucket({"id": bid, "name": doc.get("name") or bid, "owner": "", "public": bool(doc.get("public")),
                                  "file_size_limit": doc.get("file_size_limit"),
                                  "allowed_mime_types": doc.get("allowed_mime_types"), "created_at": now,
                                  "updated_at": now, "type": "STANDARD"})
                return json_response({"name": bid})
            if len(parts) == 2 and method == "GET":
                return json_response(bucket_or_404(parts[1], role))
            if len(parts) == 2 and method == "DELETE":
                bucket_or_404(parts[1], role)
                if store.count(parts[1]):
                    raise StorageError("409", "ResourceNotEmpty", "The bucket you tried to delete is not empty")
                store.drop_bucket(parts[1])
                return json_response({"message": "Successfully deleted"})
            if len(parts) == 3 and parts[2] == "empty" and method == "POST":
                bucket_or_404(parts[1], role)
                base = root / "meta" / parts[1]
                for meta in list(base.rglob("f_*.json")) if base.is_dir() else []:
                    obj = json.loads(meta.read_text())
                    store.delete(parts[1], obj["name"])
                return json_response({"message": "Successfully emptied"})
        if parts[:1] == ["object"] and len(parts) >= 2:
            rest = parts[1:]
            if rest[0] == "list" and len(rest) == 2 and method == "POST":
                err = faults.hit("list")
                if err:
                    raise err
                return list_objects(request, rest[1], role)
            if rest[0] == "info":
                err = faults.hit("info")
                if err:
                    raise err
                rest = rest[1:]
                if rest[:1] == ["authenticated"]:
                    rest = rest[1:]
                if len(rest) >= 2 and method == "GET":
                    return info(rest[0], "/".join(rest[1:]), role)
            elif rest[0] == "authenticated" and len(rest) >= 3 and method in ("GET", "HEAD"):
                err = faults.hit("download")
                if err:
                    raise err
                return serve_object(rest[1], "/".join(rest[2:]), role, method == "HEAD")
            elif len(rest) == 1 and method == "DELETE":
                err = faults.hit("delete")
                if err:
                    raise err
                bucket_or_404(rest[0], role)
                doc = request.get_json(force=True, silent=True) or {}
                prefixes = doc.get("prefixes")
                if not isinstance(prefixes, list) or not prefixes or len(prefixes) > 1000:
                    raise StorageError("400", "InvalidRequest", "body/prefixes must be an array of 1 to 1000 items")
                deleted = [o for o in (store.delete(rest[0], k) for k in prefixes) if o] if role == "service_role" else []
                return json_response(deleted)
            elif len(rest) >= 2:
                bucket_id, key = rest[0], "/".join(rest[1:])
                if method in ("POST", "PUT"):
                    err = faults.hit("upload")
                    if err:
                        raise err
                    return upload(request, bucket_id, key, role, update=method == "PUT")
                if method in ("GET", "HEAD"):
                    err = faults.hit("download")
                    if err:
                        raise err
                    return serve_object(bucket_id, key, role, method == "HEAD")
                if method == "DELETE":
                    bucket_or_404(bucket_id, role)
                    if role != "service_role" or store.delete(bucket_id, key) is None:
                        raise no_such_key()
                    return json_response({"message": "Successfully deleted"})
        return json_response({"statusCode": "404", "error": "Not Found",
                              "message": f"Route {method}:{path} not found"}, 404)

    def app(environ, start_response):
        request = Request(environ)
        path = request.path
        try:
            if path.startswith("/__admin/"):
                return admin(request, path)(environ, start_response)
            if path == GATEWAY_PREFIX or path.startswith(GATEWAY_PREFIX + "/"):
                key = request.headers.get("apikey") or request.args.get("apikey")
                if key not in api_keys:
                    with faults.lock:
                        faults.stats["gateway_rejected"] = faults.stats.get("gateway_rejected", 0) + 1
                if not key:
                    return json_response({"message": "No API key found in request",
                                          "hint": "No `apikey` request header or url param was found."},
                                         401)(environ, start_response)
                if key not in api_keys:
                    return json_response({"message": "Invalid API key",
                                          "hint": "Double check your Supabase `anon` or `service_role` API key."},
                                         401)(environ, start_response)
                path = path[len(GATEWAY_PREFIX):] or "/"
            response = dispatch(request, path)
        except StorageError as err:
            response = fail(err)
        except Exception as exc:  # noqa: BLE001 - like the real server: 500 InternalError
            response = fail(StorageError("500", "InternalError", f"{type(exc).__name__}: {exc}", "internal"))
        return response(environ, start_response)

    app.faults = faults  # type: ignore[attr-defined]
    return app


# ------------------------------------------------------------------ process wrapper for tests
class StorageServer:
    """The fake server as a subprocess on a loopback port: start, kill (SIGKILL), restart on
    the same root and port, flip faults, read stats."""

    def __init__(self, root: Path, port: int | None = None, jwt_secret: str = "super-secret-jwt-token-for-tests-only") -> None:
        from support.helpers import free_port

        self.root = Path(root)
        self.port = port or free_port()
        self.jwt_secret = jwt_secret
        self.service_key = make_jwt(jwt_secret, "service_role")
        self.anon_key = make_jwt(jwt_secret, "anon")
        self.url = f"http://127.0.0.1:{self.port}"            # project URL (gateway: /storage/v1/)
        self.storage_url = f"{self.url}{GATEWAY_PREFIX}/"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "StorageServer":
        import requests

        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root.parent / f"storage-server-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--port", str(self.port), "--root", str(self.root),
             "--jwt-secret", self.jwt_secret, "--api-key", self.service_key, "--api-key", self.anon_key],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"storage test server exited with {self.proc.returncode}")
            try:
                requests.get(f"{self.url}/__admin/stats", timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"storage test server not up on {self.url}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def wait_dead(self, timeout: float = 30.0) -> None:
        if self.proc is not None:
            self.proc.wait(timeout=timeout)

    def admin(self, path: str, doc: dict | None = None) -> dict:
        import requests

        url = f"{self.url}/__admin/{path}"
        r = requests.post(url, json=doc or {}, timeout=10) if doc is not None or path != "stats" else \
            requests.get(url, timeout=10)
        r.raise_for_status()
        return r.json()

    def faults(self, **doc: Any) -> None:
        self.admin("faults", doc)

    def stats(self) -> dict:
        return self.admin("stats")

    def create_bucket(self, name: str, file_size_limit: int | None = None) -> None:
        from storage3 import SyncStorageClient

        headers = {"apikey": self.service_key, "Authorization": f"Bearer {self.service_key}"}
        with SyncStorageClient(self.storage_url, headers) as client:
            client.create_bucket(name, options={"public": False, "file_size_limit": file_size_limit}
                                 if file_size_limit else {"public": False})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--jwt-secret", required=True)
    parser.add_argument("--api-key", action="append", default=[], help="keys the gateway accepts (repeatable)")
    args = parser.parse_args(argv)
    from werkzeug.serving import make_server

    app = create_app(Path(args.root), args.jwt_secret, set(args.api_key))
    server = make_server("127.0.0.1", args.port, app, threaded=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

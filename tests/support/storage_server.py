"""A small loopback imitation of the Supabase Storage REST API (supabase/storage v1.11, file
backend), for tests: the routes storage3 uses, answering as the real server does point by point
(see /work/shared/notes/platform-facts.md, "the real server"):

- routes at the root (`/bucket`, `/object/...`); behind the gateway prefix `/storage/v1/` only
  with `gateway=True` (the default), where, as Supabase's API gateway does, a missing or unknown
  `apikey` gets 401 `{"message": "Invalid API key", ...}`; with `gateway=False` (a storage server
  without the gateway) `/storage/v1/...` is an unknown route;
- an unknown route: HTTP 404 `{"statusCode": 404, "error": "Not Found", "message": "Route
  GET:/... not found"}` (numeric statusCode, fastify's answer);
- errors `{"statusCode": "<status>", "error", "message"}` (no `code`; `error` is the error's
  name, e.g. "not_found", "Bucket not found", "InvalidKey") with HTTP status 400, 500 for
  internal errors, 544 for a database timeout, 413 over a size limit;
- no Authorization header: 400 "headers must have required property 'authorization'";
  `Authorization: Bearer <JWT>` verified with the JWT secret (HS256); the `service_role` role
  bypasses row-level security, any other role (or none) sees no private bucket and writes nothing;
- listing (`POST /object/list/{bucket}`): one folder level, folders first (`id: null`), then
  files; listing or deleting in a bucket the key cannot see (another role, or a missing bucket)
  answers 200 `[]`; an object the key cannot see is `not_found`;
- uploads: multipart `file` + `cacheControl` (seconds, stored as `max-age=<s>`) + `metadata`
  fields, or a raw body with `x-metadata` (base64 JSON) and `cache-control`; `x-upsert: true`
  to overwrite, else 409 Duplicate; keys outside `[\\w/!-.*'() &$@=;:+,?]` (ASCII) get 400
  InvalidKey; over the global limit (`file_size_limit`, UPLOAD_FILE_SIZE_LIMIT) or the
  bucket's `file_size_limit`: 413; the answer is `{"Id", "Key"}`;
- `GET /object/info/...` answers `{id, name, version, size, content_type, cache_control, etag,
  metadata, last_modified, created_at}` (`metadata: {}` when none was set, no `bucket_id`);
  GET/HEAD of an object: unquoted ETag, Last-Modified as an HTTP date, Content-Length the size.

State lives on disk (`--root`, tests/support/storage_state.py), written atomically, so the process
can be SIGKILLed and restarted on the same root and port, like a real server whose database survives.

Test switches (no auth, loopback only): `POST /__admin/faults` with
`{"rules": [{"route": "upload", "count": 2, "status": "500"}], "crash_on_upload": 3,
"upload_delay_s": 0.2}`; `GET /__admin/stats`; `POST /__admin/reset`.

    python tests/support/storage_server.py --port 0 --port-file /tmp/st.port --root /tmp/st \\
        --jwt-secret SECRET --api-key <jwt> [--no-gateway] [--file-size-limit BYTES]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

try:
    from support.storage_state import (
        Faults,
        RouteNotFound,
        StorageError,
        Store,
        _http_date,
        _now_iso,
        access_denied,
        no_such_bucket,
        no_such_key,
    )
except ImportError:  # run as a script (the server process): tests/support is sys.path[0]
    from storage_state import (  # type: ignore[no-redef]
        Faults,
        RouteNotFound,
        StorageError,
        Store,
        _http_date,
        _now_iso,
        access_denied,
        no_such_bucket,
        no_such_key,
    )

GATEWAY_PREFIX = "/storage/v1"
_VALID_KEY = re.compile(r"^(\w|/|!|-|\.|\*|'|\(|\)| |&|\$|@|=|;|:|\+|,|\?)+$", re.ASCII)  # isValidKey


def make_jwt(secret: str, role: str | None, ttl_s: int = 3600) -> str:
    """A Supabase-style API key (JWT signed with the project's JWT secret); role None: no claim."""
    import jwt

    now = int(time.time())
    claims: dict[str, Any] = {"iss": "supabase-test", "iat": now, "exp": now + ttl_s}
    if role is not None:
        claims["role"] = role
    return jwt.encode(claims, secret, "HS256")


# ------------------------------------------------------------------ the WSGI application
Handler = Callable[..., Any]


class StorageApp:
    """The Storage API as a WSGI app (werkzeug): route, then the Authorization header, then
    the JWT, then the handler; errors rendered as the real server renders them."""

    def __init__(self, root: Path, jwt_secret: str, api_keys: set[str], faults: Faults | None = None,
                 gateway: bool = True, file_size_limit: int | None = None) -> None:
        self.root = Path(root)
        self.store = Store(self.root)
        self.jwt_secret = jwt_secret
        self.api_keys = api_keys
        self.faults = faults or Faults()
        self.gateway = gateway
        self.file_size_limit = file_size_limit

    # -------------------------------------------------------------- plumbing
    @staticmethod
    def json_response(doc: Any, status: int = 200, headers: dict | None = None) -> Any:
        from werkzeug.wrappers import Response

        return Response(json.dumps(doc), status=status, mimetype="application/json", headers=headers)

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        from werkzeug.wrappers import Request

        request = Request(environ)
        path = request.path
        try:
            if path.startswith("/__admin/"):
                response = self.admin(request, path)
            elif self.gateway and (path == GATEWAY_PREFIX or path.startswith(GATEWAY_PREFIX + "/")):
                response = self.gateway_check(request) or self.dispatch(request, path[len(GATEWAY_PREFIX):] or "/")
            else:
                response = self.dispatch(request, path)
        except StorageError as err:
            response = self.json_response(err.body(), err.http_status())
        except Exception as exc:  # noqa: BLE001 - like the real server: 500 InternalError
            err = StorageError("500", "InternalError", f"{type(exc).__name__}: {exc}", "internal")
            response = self.json_response(err.body(), 500)
        return response(environ, start_response)

    def gateway_check(self, request: Any) -> Any:
        """Supabase's API gateway: the `apikey` must be one of the project's keys."""
        key = request.headers.get("apikey") or request.args.get("apikey")
        if key not in self.api_keys:
            with self.faults.lock:
                self.faults.stats["gateway_rejected"] = self.faults.stats.get("gateway_rejected", 0) + 1
        if not key:
            return self.json_response({"message": "No API key found in request",
                                       "hint": "No `apikey` request header or url param was found."}, 401)
        if key not in self.api_keys:
            return self.json_response({"message": "Invalid API key",
                                       "hint": "Double check your Supabase `anon` or `service_role` API key."}, 401)
        return None

    def dispatch(self, request: Any, path: str) -> Any:
        parts = [p for p in path.split("/") if p != ""]
        found = self.route(request.method, parts)
        if found is None:
            raise RouteNotFound(request.method, path)  # the path as this server sees it
        name, handler, args, allow_invalid = found
        if "Authorization" not in request.headers:  # the route's header schema
            raise StorageError("400", "InvalidRequest", "headers must have required property 'authorization'", "Error")
        role = self.role(request, allow_invalid)
        err = self.faults.hit(name)
        if err:
            raise err
        return handler(request, role, *args)

    def route(self, method: str, parts: list[str]) -> tuple[str, Handler, tuple, bool] | None:
        """(fault route name, handler, path arguments, allowInvalidJwt) of a request, or None."""
        if parts[:1] == ["bucket"]:
            table = {(1, "GET"): self.list_buckets, (1, "POST"): self.create_bucket, (2, "GET"): self.get_bucket,
                     (2, "DELETE"): self.delete_bucket}
            if len(parts) == 3 and parts[2] == "empty" and method == "POST":
                return "bucket", self.empty_bucket, (parts[1],), False
            handler = table.get((len(parts), method))
            return ("bucket", handler, tuple(parts[1:]), False) if handler else None
        if parts[:1] != ["object"] or len(parts) < 2:
            return None
        rest = parts[1:]
        if rest[0] == "list":
            return ("list", self.list_objects, (rest[1],), False) if len(rest) == 2 and method == "POST" else None
        if rest[0] == "info":
            public = rest[1:2] != ["authenticated"]
            rest = rest[1:] if public else rest[2:]
            if len(rest) >= 2 and method == "GET":
                return "info", self.object_info, (rest[0], "/".join(rest[1:])), public
            return None
        if rest[0] == "authenticated":
            if len(rest) >= 3 and method in ("GET", "HEAD"):
                return "download", self.get_object, (rest[1], "/".join(rest[2:])), False
            return None
        if len(rest) == 1:
            return ("delete", self.delete_objects, (rest[0],), False) if method == "DELETE" else None
        args = (rest[0], "/".join(rest[1:]))
        if method in ("POST", "PUT"):
            return "upload", self.upload, args, False
        if method in ("GET", "HEAD"):
            return "download", self.get_object, args, method == "HEAD"
        if method == "DELETE":
            return "delete", self.delete_object, args, False
        return None

    def role(self, request: Any, allow_invalid: bool) -> str:
        """The JWT's role ('' without the claim); AccessDenied (403 in the body) when the token does
        not verify, or 'anon' on the routes the real server marks `allowInvalidJwt`."""
        import jwt as pyjwt

        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        try:
            payload = pyjwt.decode(token, self.jwt_secret, algorithms=["HS256"], options={"verify_aud": False})
        except pyjwt.PyJWTError as exc:
            if allow_invalid:
                return "anon"
            # the messages of jsonwebtoken, which the real server uses
            message = ("jwt must be provided" if not token else
                       "invalid signature" if isinstance(exc, pyjwt.InvalidSignatureError) else
                       "jwt expired" if isinstance(exc, pyjwt.ExpiredSignatureError) else "jwt malformed")
            raise access_denied(message) from None
        return str(payload.get("role") or "")

    def visible_bucket(self, bucket_id: str, role: str) -> dict | None:
        """The bucket as row-level security shows it to `role` (private buckets: service_role only)."""
        b = self.store.bucket(bucket_id)
        return b if b is not None and role == "service_role" else None

    # -------------------------------------------------------------- buckets
    def list_buckets(self, request: Any, role: str) -> Any:
        return self.json_response(self.store.buckets() if role == "service_role" else [])

    def create_bucket(self, request: Any, role: str) -> Any:
        if role != "service_role":
            raise access_denied()
        doc = request.get_json(force=True, silent=True) or {}
        bid = doc.get("id") or doc.get("name")
        if not bid or not isinstance(bid, str):
            raise StorageError("400", "InvalidBucketName", "Bucket name invalid", "Invalid Input")
        if self.store.bucket(bid):
            raise StorageError("409", "BucketAlreadyExists", "The resource already exists", "Duplicate")
        now = _now_iso()
        self.store.put_bucket({"id": bid, "name": doc.get("name") or bid, "owner": "", "public": bool(doc.get("public")),
                               "file_size_limit": doc.get("file_size_limit"),
                               "allowed_mime_types": doc.get("allowed_mime_types"), "created_at": now,
                               "updated_at": now, "type": "STANDARD"})
        return self.json_response({"name": bid})

    def get_bucket(self, request: Any, role: str, bucket_id: str) -> Any:
        b = self.visible_bucket(bucket_id, role)
        if b is None:
            raise no_such_bucket()
        return self.json_response(b)

    def delete_bucket(self, request: Any, role: str, bucket_id: str) -> Any:
        if self.visible_bucket(bucket_id, role) is None:
            raise no_such_bucket()
        if self.store.keys(bucket_id):
            raise StorageError("409", "ResourceNotEmpty", "The bucket you tried to delete is not empty")
        self.store.drop_bucket(bucket_id)
        return self.json_response({"message": "Successfully deleted"})

    def empty_bucket(self, request: Any, role: str, bucket_id: str) -> Any:
        if self.visible_bucket(bucket_id, role) is None:
            raise no_such_bucket()
        for key in self.store.keys(bucket_id):
            self.store.delete(bucket_id, key)
        return self.json_response({"message": "Successfully emptied"})

    # -------------------------------------------------------------- objects
    def list_objects(self, request: Any, role: str, bucket_id: str) -> Any:
        body = request.get_json(force=True, silent=True) or {}
        if "prefix" not in body:
            raise StorageError("400", "InvalidRequest", "body must have required property 'prefix'", "Error")
        if self.visible_bucket(bucket_id, role) is None:  # row-level security: nothing to see
            return self.json_response([])
        limit, offset = int(body.get("limit") or 100), int(body.get("offset") or 0)
        sort = body.get("sortBy") or {}
        column, order = sort.get("column") or "name", (sort.get("order") or "asc").lower()
        search = (body.get("search") or "").lower()
        folders, files = self.store.level(bucket_id, body["prefix"])
        folders = sorted((e for e in folders if e["name"].lower().startswith(search)), key=lambda e: e["name"],
                         reverse=order == "desc")
        files = sorted((e for e in files if e["name"].lower().startswith(search)),
                       key=lambda e: (e.get(column) or "") if column != "name" else e["name"], reverse=order == "desc")
        return self.json_response((folders + files)[offset:offset + limit])  # folders first

    def visible_object(self, bucket_id: str, key: str, role: str) -> dict:
        obj = self.store.get(bucket_id, key) if self.visible_bucket(bucket_id, role) is not None else None
        if obj is None:
            raise no_such_key()
        return obj

    def object_info(self, request: Any, role: str, bucket_id: str, key: str) -> Any:
        obj = self.visible_object(bucket_id, key, role)
        m = obj["metadata"]
        return self.json_response({"id": obj["id"], "name": obj["name"], "version": obj["version"],
                                   "size": m["size"], "content_type": m["mimetype"], "cache_control": m["cacheControl"],
                                   "etag": m["eTag"], "metadata": obj["user_metadata"] or {},
                                   "last_modified": obj["updated_at"], "created_at": obj["created_at"]},
                                  headers={"ETag": m["eTag"], "Cache-Control": "no-cache"})

    def get_object(self, request: Any, role: str, bucket_id: str, key: str) -> Any:
        from werkzeug.wrappers import Response

        obj = self.visible_object(bucket_id, key, role)
        m = obj["metadata"]
        if request.method == "HEAD":
            response = Response(status=200, mimetype=m["mimetype"])
        else:
            response = Response(self.store.data_path(obj).read_bytes(), status=200, mimetype=m["mimetype"])
        response.headers.update({"ETag": m["eTag"], "Cache-Control": m["cacheControl"],
                                 "Last-Modified": _http_date(obj["updated_at"]), "Content-Length": str(m["size"])})
        return response

    def delete_object(self, request: Any, role: str, bucket_id: str, key: str) -> Any:
        self.visible_object(bucket_id, key, role)
        self.store.delete(bucket_id, key)
        return self.json_response({"message": "Successfully deleted"})

    def delete_objects(self, request: Any, role: str, bucket_id: str) -> Any:
        doc = request.get_json(force=True, silent=True) or {}
        prefixes = doc.get("prefixes")
        if not isinstance(prefixes, list) or not prefixes or len(prefixes) > 1000:
            raise StorageError("400", "InvalidRequest", "body/prefixes must be an array of 1 to 1000 items", "Error")
        if self.visible_bucket(bucket_id, role) is None:  # row-level security: nothing deleted, no error
            return self.json_response([])
        deleted = [o for o in (self.store.delete(bucket_id, str(k)) for k in prefixes) if o]
        return self.json_response([{k: v for k, v in o.items() if k != "user_metadata"} for o in deleted])

    def upload(self, request: Any, role: str, bucket_id: str, key: str) -> Any:
        if not _VALID_KEY.match(key):
            raise StorageError("400", "InvalidKey", f"Invalid key: {key}")
        bucket = self.store.bucket(bucket_id)  # found as superuser; the object insert is checked by RLS
        if bucket is None:
            raise no_such_bucket()
        if role != "service_role":
            raise access_denied()
        existing = self.store.get(bucket_id, key)
        if request.method == "PUT" and existing is None:
            raise no_such_key()
        if request.method == "POST" and existing is not None and request.headers.get("x-upsert", "").lower() != "true":
            raise StorageError("409", "KeyAlreadyExists", "The resource already exists", "Duplicate")
        crash, delay = self.faults.crash_now()
        if crash:  # read part of the body, then die like a killed server (no response, connection reset)
            request.stream.read(max(1, int(request.headers.get("Content-Length") or 0) // 2))
            os.kill(os.getpid(), signal.SIGKILL)
        if delay:
            time.sleep(delay)
        limits = [int(x) for x in (self.file_size_limit, bucket.get("file_size_limit")) if x is not None]
        obj = self.store.receive(request, bucket_id, key, min(limits) if limits else None)
        with self.faults.lock:
            self.faults.uploaded.append(f"{bucket_id}/{key}")
        return self.json_response({"Id": obj["id"], "Key": f"{bucket_id}/{key}"})

    # -------------------------------------------------------------- test switches
    def admin(self, request: Any, path: str) -> Any:
        faults = self.faults
        if path == "/__admin/faults" and request.method == "POST":
            doc = request.get_json(force=True, silent=True) or {}
            with faults.lock:
                faults.rules = [dict(r) for r in doc.get("rules", [])]
                faults.crash_on_upload = doc.get("crash_on_upload")
                faults.upload_delay_s = float(doc.get("upload_delay_s", 0.0))
            return self.json_response({"ok": True})
        if path == "/__admin/stats":
            with faults.lock:
                return self.json_response({"requests": dict(faults.stats), "uploaded": list(faults.uploaded),
                                           "injected": faults.injected, "pid": os.getpid()})
        if path == "/__admin/reset" and request.method == "POST":
            with faults.lock:
                faults.rules, faults.crash_on_upload, faults.upload_delay_s = [], None, 0.0
                faults.stats, faults.uploaded, faults.injected = {}, [], 0
            return self.json_response({"ok": True})
        return self.json_response({"message": "no such admin route"}, 404)


def create_app(root: Path, jwt_secret: str, api_keys: set[str], faults: Faults | None = None, gateway: bool = True,
               file_size_limit: int | None = None) -> StorageApp:
    """The WSGI app; `app.faults` holds the test switches."""
    return StorageApp(root, jwt_secret, api_keys, faults, gateway, file_size_limit)


# ------------------------------------------------------------------ process wrapper for tests
class StorageServer:
    """The imitation as a subprocess on a loopback port: start (on a port the server binds
    itself, so no other process can race for it), kill (SIGKILL), restart on the same root and
    port, flip faults, read stats."""

    def __init__(self, root: Path, port: int | None = None, jwt_secret: str = "super-secret-jwt-token-for-tests-only",
                 gateway: bool = True, file_size_limit: int | None = None) -> None:
        self.root = Path(root)
        self.port = port                                      # None: the first start binds port 0
        self.jwt_secret = jwt_secret
        self.gateway = gateway
        self.file_size_limit = file_size_limit
        self.service_key = make_jwt(jwt_secret, "service_role")
        self.anon_key = make_jwt(jwt_secret, "anon")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The project URL (behind the gateway, storage is under /storage/v1/)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage_url(self) -> str:
        return f"{self.url}{GATEWAY_PREFIX}/" if self.gateway else f"{self.url}/"

    def start(self, timeout: float = 30.0) -> "StorageServer":
        import requests

        self.root.mkdir(parents=True, exist_ok=True)
        port_file = self.root.parent / f"{self.root.name}.port"
        port_file.unlink(missing_ok=True)
        args = [sys.executable, str(Path(__file__).resolve()), "--port", str(self.port or 0), "--port-file",
                str(port_file), "--root", str(self.root), "--jwt-secret", self.jwt_secret,
                "--api-key", self.service_key, "--api-key", self.anon_key]
        if not self.gateway:
            args.append("--no-gateway")
        if self.file_size_limit is not None:
            args += ["--file-size-limit", str(self.file_size_limit)]
        log_path = self.root.parent / f"{self.root.name}-server.log"
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"storage test server exited with {self.proc.returncode}: "
                                   f"{log_path.read_text(errors='replace')[-2000:]}")
            if port_file.is_file() and port_file.read_text().strip():
                self.port = int(port_file.read_text())
                try:
                    requests.get(f"{self.url}/__admin/stats", timeout=1)
                    return self
                except requests.RequestException:
                    pass
            time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"storage test server not up after {timeout}s (log: {log_path})")

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
    parser.add_argument("--port", type=int, required=True, help="0: any free port (see --port-file)")
    parser.add_argument("--port-file", default=None, help="write the bound port here once listening")
    parser.add_argument("--root", required=True)
    parser.add_argument("--jwt-secret", required=True)
    parser.add_argument("--api-key", action="append", default=[], help="keys the gateway accepts (repeatable)")
    parser.add_argument("--no-gateway", action="store_true", help="serve the routes at the root only")
    parser.add_argument("--file-size-limit", type=int, default=None, help="UPLOAD_FILE_SIZE_LIMIT in bytes")
    args = parser.parse_args(argv)
    from werkzeug.serving import make_server

    app = create_app(Path(args.root), args.jwt_secret, set(args.api_key), gateway=not args.no_gateway,
                     file_size_limit=args.file_size_limit)
    server = make_server("127.0.0.1", args.port, app, threaded=True)
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(str(server.server_port))
        tmp.replace(args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()

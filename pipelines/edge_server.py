"""A loopback HTTP server for local edge trials: the demo page (edge/) and a local deployment
folder, read-only, so the browser client fetches `production.json`, the manifest and the files
exactly as it would from Supabase Storage or S3.

    /                      -> /demo.html?model=<model>
    /<file>                   edge/ files (html, js, css) and edge/node_modules/@tensorflow/tfjs/dist/*
    /store/<key>              the bucket folder (`<local_dir>/<bucket>/`), e.g. /store/two_tower/production.json

Loopback only: browsers give Web Crypto (the client's sha256 checks) to secure contexts, which
plain http has only on localhost, and this server has no authentication.
"""

from __future__ import annotations

import ipaddress
import mimetypes
import os
import shutil
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from ml.logs import get_logger

log = get_logger("deployment")

EDGE_DIR = Path(__file__).resolve().parents[1] / "edge"
TFJS_DIST = Path("node_modules") / "@tensorflow" / "tfjs" / "dist"
STORE = "/store/"
_PAGE_SUFFIXES = {".html", ".js", ".css", ".md", ".svg", ".ico"}
_TYPES = {".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
          ".json": "application/json", ".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".map": "application/json", ".md": "text/markdown; charset=utf-8"}


def find_bucket(deployments: Path, model: str, bucket: str) -> Path:
    """The folder holding `<model>/production.json`: `deployments` itself or `deployments/<bucket>`."""
    for candidate in (deployments, deployments / bucket):
        if (candidate / model / "production.json").is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"no {model}/production.json under {deployments} (nor {deployments / bucket}): deploy a bundle there first, "
        f"e.g. TOWEROPS_DEPLOY_DIR={deployments} towerops deploy --model-dir models/two_tower --version v1.0.0 "
        f"--model-name {model}, or pass --deployments <the local_dir of your deployment config>")


def check_loopback(host: str) -> None:
    """Refuse a non-loopback bind: the server has no auth, and Web Crypto needs localhost over http."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"--host {host} is not a loopback address: the edge trial server has no authentication and "
                         "browsers give Web Crypto (the client's sha256 checks) to http pages only on localhost; use "
                         "127.0.0.1 and put the deployment behind real storage (Supabase Storage, S3) for anything else")


def _inside(root: Path, rel: str) -> Path | None:
    parts = [p for p in rel.split("/") if p]
    if not parts or any(p in (".", "..") or p.startswith(".") for p in parts):
        return None
    path = root.joinpath(*parts).resolve()
    try:
        path.relative_to(root)
    except ValueError:
        return None
    return path if path.is_file() else None


class EdgeServer(ThreadingHTTPServer):
    """Serves the demo and one bucket folder; `url` is the demo's address."""

    daemon_threads = True

    def __init__(self, bucket_dir: Path, model: str, host: str = "127.0.0.1", port: int = 8765,
                 edge_dir: Path = EDGE_DIR) -> None:
        check_loopback(host)
        self.bucket_dir = Path(bucket_dir).resolve()
        self.edge_dir = Path(edge_dir).resolve()
        self.model = model
        if not (self.edge_dir / TFJS_DIST / "tf.fesm.min.js").is_file():
            raise FileNotFoundError(f"@tensorflow/tfjs is not installed in {self.edge_dir}: run `make install` "
                                    f"(npm ci --prefer-offline in {self.edge_dir.name}/)")
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/?model={quote(self.model)}"

    def start_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="edge-server", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: EdgeServer
    server_version = "towerops-edge"
    sys_version = ""

    def log_message(self, fmt: str, *args) -> None:  # to the deployment log, not stderr
        log.debug("edge server: " + fmt, *args)

    def _send_error(self, status: HTTPStatus, message: str) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _resolve(self, path: str) -> tuple[Path | None, bool]:
        """(file to send, whether it is a storage object)."""
        if path.startswith(STORE):
            return _inside(self.server.bucket_dir, path[len(STORE):]), True
        rel = path.lstrip("/")
        if rel.startswith(TFJS_DIST.as_posix() + "/"):
            return _inside(self.server.edge_dir, rel), False
        if "/" in rel or Path(rel).suffix not in _PAGE_SUFFIXES:
            return None, False
        return _inside(self.server.edge_dir, rel), False

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        path = unquote(url.path)
        if path == "/":  # the demo, for this server's model unless the query names one
            query = url.query if "model=" in url.query else "&".join(
                q for q in (f"model={quote(self.server.model)}", url.query) if q)
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", f"/demo.html?{query}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        file, is_object = self._resolve(path)
        if file is None:
            what = "object" if path.startswith(STORE) else "file"
            self._send_error(HTTPStatus.NOT_FOUND, f"{what} {path} not found")
            return
        ctype = _TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        with open(file, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(size))
            self.send_header("Cache-Control", "no-store" if is_object else "no-cache")
            if is_object:
                self.send_header("Access-Control-Allow-Origin", "*")
            self.end_headers()
            if self.command != "HEAD":
                try:
                    shutil.copyfileobj(fh, self.wfile, 1 << 20)
                except (BrokenPipeError, ConnectionResetError):  # the browser went away mid-file
                    pass

    do_HEAD = do_GET  # noqa: N815

    def _refuse(self) -> None:
        self._send_error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not allowed: the edge trial server is "
                         "read-only (GET, HEAD)")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

"""Faults against the Supabase Storage API server on loopback (tests/support/storage_server.py,
a separate process with its state on disk): injected 5xx retried, the server killed midway
then the sync resumed, the client killed midway then resumed, a wrong key or a too-large
object failing at once with nothing changed, and keys never reaching the log."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.deploy import DEPLOYED, fast_config, make_bundle
from support.helpers import REPO_ROOT
from support.storage_server import StorageServer, make_jwt

pytestmark = pytest.mark.integration

N_FILES = len(DEPLOYED)


@pytest.fixture
def server(tmp_path):
    s = StorageServer(tmp_path / "storage-root").start()
    yield s
    s.kill()


def _backend(server: StorageServer, bucket: str, key: str | None = None, via_gateway: bool = True):
    from registry.deploy.storage.supabase import SupabaseStorageBackend

    if via_gateway:
        return SupabaseStorageBackend(bucket, url=server.url, key=key or server.service_key)
    return SupabaseStorageBackend(bucket, storage_url=server.url + "/", key=key or server.service_key)


def _deployer(server, bucket, key=None, via_gateway=True, dsn=None, **cfg):
    from registry.deploy.deployer import SupabaseDeployer

    return SupabaseDeployer(fast_config(storage_bucket=bucket, **cfg), backend=_backend(server, bucket, key, via_gateway),
                            model_name="tt", dsn=dsn, use_table=dsn is not None)


def _snapshot(server, bucket) -> dict[str, str]:
    """Every object in the bucket with the sha256 of its content."""
    b = _backend(server, bucket)
    return {o.key: hashlib.sha256(b.get_bytes(o.key)).hexdigest() for o in b.list("")}


@pytest.fixture
def deploy_log():
    """Returns the deployment.log text written since the test started."""
    from ml.logs import configure_logging, get_logger

    configure_logging()  # what the CLI does when it starts: logs/deployment.log under $TOWEROPS_LOG_DIR
    handlers = [h for h in get_logger("deployment").handlers if hasattr(h, "baseFilename")]
    assert handlers, "deployment.log handler missing"
    path = Path(handlers[0].baseFilename)
    start = path.stat().st_size if path.exists() else 0

    def read() -> str:
        for h in handlers:
            h.flush()
        with open(path, "rb") as fh:
            fh.seek(start)
            return fh.read().decode(errors="replace")

    return read


def test_injected_500s_and_503s_are_retried_and_the_deploy_completes(server, tmp_path, deploy_log) -> None:
    bucket = "model-artifacts"
    server.create_bucket(bucket)
    # 500 from the server, and a 503 (database connection limit) that the real server sends as
    # HTTP 400 with statusCode "503" in the body: both transient
    server.faults(rules=[{"route": "upload", "count": 2, "status": "500"},
                         {"route": "info", "count": 1, "status": "503"},
                         {"route": "download", "count": 1, "status": "544"}])
    result = _deployer(server, bucket).deploy_model(make_bundle(tmp_path / "b"), "v1.0.0")
    assert result.activated and len(result.uploaded) == N_FILES + 1
    stats = server.stats()
    assert stats["injected"] == 4
    snapshot = _snapshot(server, bucket)
    manifest = json.loads(_backend(server, bucket).get_bytes("tt/v1.0.0/manifest.json"))
    assert all(snapshot[f"tt/v1.0.0/{rel}"] == info["sha256"] for rel, info in manifest["files"].items())
    text = deploy_log()
    assert text.count("retrying") == 4 and "500 internal" in text and "503 DatabaseConnectionLimit" in text and "544 DatabaseTimeout" in text
    assert "uploaded 1/" in text and f"uploaded {N_FILES}/{N_FILES}" in text   # per-file progress
    assert server.service_key not in text                                # keys never logged


def test_server_killed_midway_then_the_sync_resumes(server, tmp_path) -> None:
    from registry.deploy.storage import TransientStorageError

    bucket = "model-artifacts"
    server.create_bucket(bucket)
    bundle = make_bundle(tmp_path / "b")
    server.faults(crash_on_upload=5)                                       # SIGKILL while reading upload #5
    with pytest.raises(TransientStorageError, match="nothing was activated: re-run the sync to resume"):
        _deployer(server, bucket, workers=1).deploy_model(bundle, "v1.0.0")
    server.wait_dead()
    server.start()                                                        # same root and port: state survived
    kept = _snapshot(server, bucket)
    assert len(kept) == 4 and "tt/production.json" not in kept and "tt/v1.0.0/manifest.json" not in kept

    result = _deployer(server, bucket, workers=1).deploy_model(bundle, "v1.0.0")
    assert result.activated and result.skipped == 4
    assert len(result.uploaded) == N_FILES - 4 + 1                        # the rest + the manifest
    assert server.stats()["requests"]["upload"] == N_FILES - 4 + 2        # + the pointer
    assert _deployer(server, bucket).pointer()["version"] == "v1.0.0"


def test_client_killed_midway_then_the_sync_resumes(server, tmp_path) -> None:
    bucket = "model-artifacts"
    server.create_bucket(bucket)
    bundle = make_bundle(tmp_path / "b")
    cfg = tmp_path / "deployment.yaml"
    cfg.write_text("supabase: {storage_bucket: model-artifacts}\nstorage: {backend: supabase, workers: 1, "
                   "retry: {attempts: 2, backoff_s: 0.05}}\n")
    env = {**os.environ, "SUPABASE_URL": server.url, "SUPABASE_SERVICE_ROLE_KEY": server.service_key,
           "TOWEROPS_LOG_DIR": str(tmp_path / "logs"), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("TOWEROPS_DEPLOY_DSN", None)
    env.pop("SUPABASE_DB_URL", None)
    server.faults(upload_delay_s=0.3)
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "deploy", "--model-dir", str(bundle), "--version",
                             "v1.0.0", "--model-name", "tt", "--config", str(cfg)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(server.stats()["uploaded"]) < 3 and time.time() < deadline:
            assert proc.poll() is None, "the deploy finished before it could be killed"
            time.sleep(0.05)
        proc.kill()                                                       # the sync dies midway
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    server.faults(upload_delay_s=0)
    time.sleep(0.5)                                                       # an upload in flight may still land
    done = len(server.stats()["uploaded"])
    assert 3 <= done < N_FILES
    assert "tt/production.json" not in _snapshot(server, bucket)          # readers still see nothing

    result = _deployer(server, bucket).deploy_model(bundle, "v1.0.0")
    assert result.activated and len(result.uploaded) == N_FILES - done + 1
    assert _deployer(server, bucket).pointer()["version"] == "v1.0.0"


@pytest.mark.parametrize("how", ["unknown apikey at the gateway", "JWT signed with another secret", "anon key"])
def test_wrong_key_fails_at_once_and_changes_nothing(server, tmp_path, pg_dsn, how, deploy_log) -> None:
    from registry.deploy.storage import StorageAuthError
    from registry.deploy.table import ModelVersionsTable

    bucket = "model-artifacts"
    server.create_bucket(bucket)
    good = _deployer(server, bucket, dsn=pg_dsn).deploy_model(make_bundle(tmp_path / "b1", seed=1), "v1.0.0")
    assert good.activated
    before = _snapshot(server, bucket)
    rows_before = ModelVersionsTable(pg_dsn).rows("tt")
    server.admin("reset", {})

    key, via_gateway, expected = {
        "unknown apikey at the gateway": ("not-a-real-key", True, "Invalid API key"),
        "JWT signed with another secret": (make_jwt("another-secret-another-secret-123", "service_role"), False,
                                           "invalid signature"),
        "anon key": (server.anon_key, True, "role 'anon'"),
    }[how]
    with pytest.raises(StorageAuthError, match="SUPABASE_SERVICE_ROLE_KEY") as info:
        _deployer(server, bucket, key=key, via_gateway=via_gateway, dsn=pg_dsn).deploy_model(
            make_bundle(tmp_path / "b2", seed=2), "v1.1.0")
    assert expected in str(info.value)
    assert key not in str(info.value) and key not in deploy_log() and "retrying" not in deploy_log()
    stats = server.stats()["requests"]
    assert stats.get("upload", 0) == 0                                     # not one object sent
    assert stats.get("bucket", 0) + stats.get("gateway_rejected", 0) <= 1  # and not retried
    assert _snapshot(server, bucket) == before                             # nothing changed in storage
    assert ModelVersionsTable(pg_dsn).rows("tt") == rows_before            # nor in model_versions


def test_object_too_large_fails_at_once_with_the_fix(server, tmp_path) -> None:
    from registry.deploy.storage import ObjectTooLarge

    bucket = "small-bucket"
    server.create_bucket(bucket, file_size_limit=5000)                    # item_embeddings.npy is 6000 bytes
    with pytest.raises(ObjectTooLarge, match="file size limit") as info:
        _deployer(server, bucket, workers=1).deploy_model(make_bundle(tmp_path / "b"), "v1.0.0")
    assert "413" in str(info.value) and "item_embeddings.npy" in str(info.value)
    assert server.stats()["requests"]["upload"] == 1                      # largest file first; no retry
    assert _snapshot(server, bucket) == {}


def test_missing_bucket_names_the_bucket_and_the_fix(server, tmp_path) -> None:
    from registry.deploy.storage import BucketNotFound

    with pytest.raises(BucketNotFound, match="'nope-bucket' does not exist.*New bucket"):
        _deployer(server, "nope-bucket").deploy_model(make_bundle(tmp_path / "b"), "v1.0.0")
    assert server.stats()["requests"].get("upload", 0) == 0


def test_storage3_client_sees_what_the_real_server_sends(server) -> None:
    """The loopback server's error bodies go through storage3 like the real server's."""
    from storage3 import SyncStorageClient
    from storage3.exceptions import StorageApiError

    headers = {"apikey": server.service_key, "Authorization": f"Bearer {server.service_key}"}
    with SyncStorageClient(server.storage_url, headers) as client:
        client.create_bucket("b1")
        bucket = client.from_("b1")
        bucket.upload("a/b.txt", b"hello", {"content-type": "text/plain", "metadata": {"sha256": "x"}})
        assert bucket.download("a/b.txt") == b"hello"
        assert bucket.exists("a/b.txt") and not bucket.exists("a/missing.txt")
        info = bucket.info("a/b.txt")
        assert (info["size"], info["metadata"], info["content_type"]) == (5, {"sha256": "x"}, "text/plain")
        with pytest.raises(StorageApiError) as dup:
            bucket.upload("a/b.txt", b"again")                              # no upsert: 409 in the body
        assert (str(dup.value.status), dup.value.code) == ("409", "Duplicate")
        assert [e["name"] for e in bucket.list("a")] == ["b.txt"]
        assert [(e["name"], e["id"]) for e in bucket.list("")] == [("a", None)]
        assert [o["name"] for o in bucket.remove(["a/b.txt"])] == ["a/b.txt"]
        with pytest.raises(StorageApiError) as missing:
            client.get_bucket("nope")
        assert (str(missing.value.status), missing.value.code) == ("404", "Bucket not found")

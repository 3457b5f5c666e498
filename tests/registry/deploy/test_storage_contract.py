"""One contract for every storage backend: the local folder, S3 (moto's standalone server on
a loopback port, through boto3), and Supabase Storage's REST API (the loopback server in
tests/support/storage_server.py, through storage3). Then the deployer on each backend:
deploy, no-op re-sync, rollback without upload, retention."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.deploy import DEPLOYED, fast_config, make_bundle, open_backend_for

pytestmark = pytest.mark.integration


class Counting:
    """Counts the writes that reach a backend (delegates everything)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.puts: list[str] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put_file(self, key, *args, **kwargs):
        self.puts.append(key)
        return self.inner.put_file(key, *args, **kwargs)

    def put_bytes(self, key, *args, **kwargs):
        self.puts.append(key)
        return self.inner.put_bytes(key, *args, **kwargs)

    def put_if_changed(self, *args, **kwargs):  # route through our counting put_file
        from registry.deploy.storage.base import StorageBackend

        return StorageBackend.put_if_changed(self, *args, **kwargs)


def _make_backend(kind: str, tmp_path: Path, request) -> object:
    return open_backend_for(kind, tmp_path, request)


def _file(tmp_path: Path, name: str, data: bytes):
    from registry.deploy.storage.base import digest_file

    p = tmp_path / name
    p.write_bytes(data)
    return p, digest_file(p)


# ------------------------------------------------------------------ the backend contract
def test_put_stat_get_roundtrip_with_sha256(backend, tmp_path) -> None:
    backend.check()
    data = bytes(range(256)) * 50
    path, digest = _file(tmp_path, "blob.bin", data)
    backend.put_file("m/v1.0.0/blob.bin", path, digest, "application/octet-stream")
    st = backend.stat("m/v1.0.0/blob.bin")
    assert (st.size, st.sha256) == (len(data), digest.sha256)
    assert backend.get_bytes("m/v1.0.0/blob.bin") == data
    assert backend.hash_object("m/v1.0.0/blob.bin").sha256 == digest.sha256
    assert backend.stat("m/v1.0.0/missing.bin") is None
    assert backend.get_bytes("m/v1.0.0/missing.bin") is None
    assert backend.hash_object("m/missing") is None


def test_put_bytes_overwrites(backend) -> None:
    backend.put_bytes("m/production.json", b'{"version": "v1"}', "application/json", "0")
    backend.put_bytes("m/production.json", b'{"version": "v2-longer"}', "application/json", "0")
    assert backend.get_bytes("m/production.json") == b'{"version": "v2-longer"}'
    st = backend.stat("m/production.json")
    assert st.size == len(b'{"version": "v2-longer"}')
    import hashlib

    assert st.sha256 == hashlib.sha256(b'{"version": "v2-longer"}').hexdigest()


def test_put_if_changed_uploads_only_changes(backend, tmp_path) -> None:
    path, digest = _file(tmp_path, "a.bin", b"x" * 1000)
    assert backend.put_if_changed("m/a.bin", path, digest, "application/octet-stream") is True
    assert backend.put_if_changed("m/a.bin", path, digest, "application/octet-stream") is False
    path2, digest2 = _file(tmp_path, "b.bin", b"y" * 1000)        # same size, other content
    assert backend.put_if_changed("m/a.bin", path2, digest2, "application/octet-stream") is True
    assert backend.get_bytes("m/a.bin") == b"y" * 1000


def test_list_is_recursive_and_list_dirs_one_level(backend) -> None:
    for key in ("m/v1.0.0/x.json", "m/v1.0.0/sub/deep/y.bin", "m/v2.0.0/z.bin", "m/production.json", "other/q"):
        backend.put_bytes(key, key.encode(), "application/octet-stream")
    listed = {o.key: o.size for o in backend.list("m/v1.0.0")}
    assert listed == {"m/v1.0.0/x.json": len("m/v1.0.0/x.json"), "m/v1.0.0/sub/deep/y.bin": len("m/v1.0.0/sub/deep/y.bin")}
    assert backend.list_dirs("m") == ["v1.0.0", "v2.0.0"]
    assert backend.list("nothing/here") == [] and backend.list_dirs("nothing") == []


def test_delete_removes_objects_and_ignores_missing(backend) -> None:
    for key in ("m/v1.0.0/a", "m/v1.0.0/sub/b", "m/v2.0.0/c"):
        backend.put_bytes(key, b"1", "application/octet-stream")
    backend.delete(["m/v1.0.0/a", "m/v1.0.0/sub/b", "m/v1.0.0/never-existed"])
    assert backend.stat("m/v1.0.0/a") is None and backend.list("m/v1.0.0") == []
    assert backend.list_dirs("m") == ["v2.0.0"]
    assert backend.get_bytes("m/v2.0.0/c") == b"1"


@pytest.mark.parametrize("kind", ["s3", "supabase"])
def test_missing_bucket_fails_at_once_with_the_fix(kind, tmp_path, request) -> None:
    from registry.deploy.storage import BucketNotFound

    b = _make_backend(kind, tmp_path, request)
    b.bucket = "no-such-bucket-here"
    if kind == "supabase":
        b._bucket_api = None
    with pytest.raises(BucketNotFound, match="no-such-bucket-here.*does not exist.*storage_bucket"):
        b.check()


# ------------------------------------------------------------------ the deployer on each backend
def test_deploy_resync_rollback_and_retention(backend, tmp_path) -> None:
    from registry.deploy.deployer import SupabaseDeployer

    counting = Counting(backend)
    deployer = SupabaseDeployer(fast_config(max_versions=2), backend=counting, model_name="tt", use_table=False)
    b1, b2, b3 = (make_bundle(tmp_path / f"b{i}", seed=i) for i in (1, 2, 3))

    first = deployer.deploy_model(model_dir=b1, version="v1.0.0", description="first", run_id="run1")
    assert first.activated and sorted(k[len("tt/v1.0.0/"):] for k in first.uploaded) == sorted(DEPLOYED + ["manifest.json"])
    assert counting.puts[-1] == "tt/production.json"                      # the pointer moves last
    assert counting.puts[-2] == "tt/v1.0.0/manifest.json"                 # after every file, the manifest
    manifest = deployer.read_json("tt/v1.0.0/manifest.json")
    assert set(manifest["files"]) == set(DEPLOYED) and manifest["run_id"] == "run1"
    for rel, info in manifest["files"].items():
        assert backend.stat(f"tt/v1.0.0/{rel}").size == info["size"]
        assert backend.hash_object(f"tt/v1.0.0/{rel}").sha256 == info["sha256"]

    deployer.deploy_model(model_dir=b2, version="v1.1.0")
    assert deployer.pointer()["version"] == "v1.1.0" and deployer.pointer()["previous"] == "v1.0.0"

    counting.puts.clear()
    again = deployer.deploy_model(model_dir=b2, version="v1.1.0")          # unchanged: nothing uploaded
    assert counting.puts == [] and again.uploaded == [] and again.skipped == len(DEPLOYED) + 1

    back = deployer.rollback()                                              # re-point, no upload
    assert back.repointed_only and back.version == "v1.0.0" and counting.puts == ["tt/production.json"]
    assert deployer.pointer()["version"] == "v1.0.0"

    deployer.deploy_model(model_dir=b3, version="v1.2.0")                  # 3 folders > max_versions 2
    folders = backend.list_dirs("tt")
    # production (v1.2.0) and its rollback target (v1.0.0, the one it replaced) stay; v1.1.0 goes
    assert folders == ["v1.0.0", "v1.2.0"]
    assert backend.list("tt/v1.1.0") == []
    assert deployer.rollback().version == "v1.0.0"


def test_s3_multipart_upload_keeps_its_sha256_and_verifies(moto_url, tmp_path, request) -> None:
    """Above the multipart threshold the ETag is no content hash; the recorded sha256 is."""
    from registry.deploy.storage.s3 import S3Backend

    b = _make_backend("s3", tmp_path, request)
    b.multipart_threshold = b.multipart_chunk = 5 * 1024 * 1024           # S3's minimum part size
    path, digest = _file(tmp_path, "big.npy", os.urandom(6 * 1024 * 1024))
    b.put_file("m/v1.0.0/big.npy", path, digest, "application/octet-stream")
    st = b.stat("m/v1.0.0/big.npy")
    assert isinstance(b, S3Backend) and st.etag.strip('"').endswith("-2")  # two parts
    assert (st.size, st.sha256) == (digest.size, digest.sha256)
    assert b.hash_object("m/v1.0.0/big.npy").sha256 == digest.sha256

"""Deployment follows the real Supabase Storage server (issue 15), on the local folder, the
Supabase imitation and S3 (moto, made to answer as Supabase's S3 endpoint where moto differs)
wherever the case applies: retention counts complete versions only, key names are checked
before any upload, S3 deletes tolerate missing keys, interrupted multipart uploads and a killed
local deploy's leftovers are swept, "bucket does not exist" only for a missing bucket, one
Cache-Control everywhere, MB/s over upload time, and one retry policy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from support.deploy import FailAfter, fast_config, imitate_supabase_s3_deletes, make_bundle
from support.helpers import REPO_ROOT
from support.storage_server import StorageServer, make_jwt

pytestmark = pytest.mark.integration


def _deployer(backend, **cfg):
    from registry.deploy.deployer import SupabaseDeployer

    return SupabaseDeployer(fast_config(**cfg), backend=backend, model_name="tt", use_table=False)


def _file(tmp_path: Path, name: str, data: bytes):
    from registry.deploy.storage.base import digest_file

    p = tmp_path / name
    p.write_bytes(data)
    return p, digest_file(p)


# ------------------------------------------------------------------ retention
def _three_versions_and_a_failed_fourth(backend, tmp_path):
    """v1.0.0, v1.1.0, v1.2.0 complete; v1.5.0 failed after 4 files (no manifest)."""
    from registry.deploy.storage import ObjectTooLarge

    d = _deployer(backend, max_versions=3, workers=1)
    for i, version in enumerate(("v1.0.0", "v1.1.0", "v1.2.0")):
        d.deploy_model(make_bundle(tmp_path / f"b{i}", seed=i), version)
    with pytest.raises(ObjectTooLarge):
        _deployer(FailAfter(backend, 4), max_versions=3, workers=1).deploy_model(
            make_bundle(tmp_path / "b5", seed=5), "v1.5.0")
    assert backend.list_dirs("tt") == ["v1.0.0", "v1.1.0", "v1.2.0", "v1.5.0"]
    assert len(backend.list("tt/v1.5.0")) == 4 and backend.stat("tt/v1.5.0/manifest.json") is None
    return d


def test_retention_counts_only_complete_versions(backend, tmp_path) -> None:
    d = _three_versions_and_a_failed_fourth(backend, tmp_path)
    d.incomplete_grace_s = 0                       # the failed upload is over: no one writes v1.5.0 now
    result = d.deploy_model(make_bundle(tmp_path / "b4", seed=4), "v1.4.0")
    # max_versions 3 complete versions: production v1.4.0, its rollback target v1.2.0, and v1.1.0;
    # v1.0.0 is one too many and the incomplete v1.5.0 is removed, not counted
    assert backend.list_dirs("tt") == ["v1.1.0", "v1.2.0", "v1.4.0"]
    assert result.pruned == ["v1.0.0", "v1.5.0"]
    assert backend.list("tt/v1.5.0") == []
    assert d.rollback().version == "v1.2.0" and d.rollback("v1.1.0").version == "v1.1.0"


def test_retention_keeps_a_fresh_incomplete_folder_another_upload_may_be_writing(make_backend, tmp_path) -> None:
    backend = make_backend("local")
    d = _three_versions_and_a_failed_fourth(backend, tmp_path)
    result = d.deploy_model(make_bundle(tmp_path / "b4", seed=4), "v1.4.0")   # v1.5.0 written to seconds ago
    assert result.pruned == ["v1.0.0"]                                       # not counted, not removed (yet)
    assert backend.list_dirs("tt") == ["v1.1.0", "v1.2.0", "v1.4.0", "v1.5.0"]


def test_retention_never_removes_the_version_being_uploaded(backend, tmp_path) -> None:
    d = _deployer(backend, max_versions=2, workers=1)
    d.deploy_model(make_bundle(tmp_path / "b1", seed=1), "v1.0.0")
    d.deploy_model(make_bundle(tmp_path / "b2", seed=2), "v1.1.0")
    pruned_midway: list[list[str]] = []

    class PruneMidway(FailAfter):
        """After the third file of v2.0.0, retention runs (as another activation in this process would)."""

        def put_file(self, key, *args, **kwargs):
            out = super().put_file(key, *args, **kwargs)
            if self.left == 97:
                pruned_midway.append(uploading.prune("tt"))
            return out

    uploading = _deployer(PruneMidway(backend, 100), max_versions=2, workers=1)
    uploading.incomplete_grace_s = 0                  # even with no grace period at all
    result = uploading.deploy_model(make_bundle(tmp_path / "b3", seed=3), "v2.0.0")
    assert pruned_midway == [[]]                      # v2.0.0 had 3 files and no manifest: left alone
    assert result.activated and uploading.remote_complete("v2.0.0") is not None


# ------------------------------------------------------------------ object keys
@pytest.mark.parametrize("name, bad", [("we[1].npy", "'[', ']'"), ("a#b.json", "'#'"), ("ïtem.json", "'ï'")])
def test_key_names_outside_the_servers_rule_are_refused_before_any_upload(backend, tmp_path, name, bad) -> None:
    from registry.deploy.storage import InvalidObjectKey

    bundle = make_bundle(tmp_path / "b")
    (bundle / "embeddings" / name).write_bytes(b"x")
    with pytest.raises(InvalidObjectKey) as info:
        _deployer(backend).deploy_model(bundle, "v1.0.0")
    message = str(info.value)
    assert f"'tt/v1.0.0/embeddings/{name}' (from {bundle / 'embeddings' / name}): {bad}" in message
    assert "Rename the file(s)" in message and "nothing was uploaded" in message
    assert backend.list("") == []                                           # not one object sent


def test_key_rule_is_the_servers_rule() -> None:
    from support.storage_server import _VALID_KEY

    from registry.deploy.storage.base import invalid_key_characters

    accepted = {chr(c) for c in range(32, 127) if not invalid_key_characters(chr(c))}
    punctuation = set("_/!-.*'() &$@=;:+,?")
    assert accepted == punctuation | {chr(c) for c in range(128) if chr(c).isalnum()}
    for c in [*map(chr, range(0, 256)), "ü", "€", "😀"]:                   # the imitation's own regex agrees
        assert (not invalid_key_characters(c)) == bool(_VALID_KEY.match(c)), repr(c)
    assert invalid_key_characters("a[b]#c%d\"e ü") == ["[", "]", "#", "%", '"', "ü"]


# ------------------------------------------------------------------ S3 deletes
def test_s3_delete_tolerates_access_denied_for_missing_keys(make_backend) -> None:
    b = make_backend("s3")
    refused = imitate_supabase_s3_deletes(b)
    b.put_bytes("m/a", b"1", "application/octet-stream")
    b.delete(["m/a", "m/never-existed"])
    assert refused == [["m/never-existed"]]                                 # what Supabase answers for it
    assert b.stat("m/a") is None


def test_s3_delete_still_fails_for_a_key_it_may_not_delete(make_backend) -> None:
    from registry.deploy.storage import PermanentStorageError

    b = make_backend("s3")
    imitate_supabase_s3_deletes(b, deny_existing=True)
    b.put_bytes("m/a", b"1", "application/octet-stream")
    with pytest.raises(PermanentStorageError, match="failed for 1 object.*m/a: AccessDenied"):
        b.delete(["m/a", "m/never-existed"])
    assert b.stat("m/a") is not None


def test_s3_retention_deletes_with_supabase_answers(make_backend, tmp_path) -> None:
    b = make_backend("s3")
    imitate_supabase_s3_deletes(b)
    d = _deployer(b, max_versions=2)
    for i, version in enumerate(("v1.0.0", "v1.1.0", "v1.2.0")):
        d.deploy_model(make_bundle(tmp_path / f"b{i}", seed=i), version)
    assert b.list_dirs("tt") == ["v1.1.0", "v1.2.0"]


# ------------------------------------------------------------------ interrupted multipart uploads
def _real_initiated_times(b) -> dict[str, float]:
    """moto reports every multipart upload as initiated in 2010; a real server reports when it
    was. Returns {key: time} the test fills; listings answer those times."""
    from datetime import datetime, timezone

    times: dict[str, float] = {}

    def after(parsed, **_):
        for up in parsed.get("Uploads", []) or []:
            if up["Key"] in times:
                up["Initiated"] = datetime.fromtimestamp(times[up["Key"]], timezone.utc)

    b.client.meta.events.register("after-call.s3.ListMultipartUploads", after)
    return times


def test_s3_multipart_upload_is_aborted_when_it_fails(make_backend, tmp_path) -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    from registry.deploy.storage import StorageError

    b = make_backend("s3")
    b.multipart_threshold = b.multipart_chunk = 5 * 1024 * 1024
    aborts = []

    def refuse_part(**_):
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "injected"},
                           "ResponseMetadata": {"HTTPStatusCode": 403}}, "UploadPart")

    def abort(**_):
        aborts.append(1)
        if len(aborts) == 1:  # boto3's own clean-up fails, as when the connection is gone
            raise EndpointConnectionError(endpoint_url="injected")

    b.client.meta.events.register("before-call.s3.UploadPart", refuse_part)
    b.client.meta.events.register("before-call.s3.AbortMultipartUpload", abort)
    path, digest = _file(tmp_path, "big.npy", os.urandom(6 * 1024 * 1024))
    with pytest.raises(StorageError):
        b.put_file("m/v1.0.0/big.npy", path, digest, "application/octet-stream")
    assert len(aborts) == 2                                                 # boto3's (failed), then ours
    assert b.multipart_uploads("m/") == []


def test_s3_interrupted_multipart_uploads_are_swept_on_the_next_run(make_backend, tmp_path) -> None:
    b = make_backend("s3")
    times = _real_initiated_times(b)

    def dangling(key: str) -> None:                                         # what a killed deploy leaves
        up = b.client.create_multipart_upload(Bucket=b.bucket, Key=key)
        b.client.upload_part(Bucket=b.bucket, Key=key, UploadId=up["UploadId"], PartNumber=1, Body=b"x" * 1000)
        times[key] = time.time()

    dangling("tt/v1.0.0/embeddings/item_embeddings.npy")                   # the version deployed next
    dangling("tt/v0.9.0/embeddings/item_embeddings.npy")                   # another's, seconds old: maybe live
    d = _deployer(b)
    d.deploy_model(make_bundle(tmp_path / "b1", seed=1), "v1.0.0")
    assert [u["Key"] for u in b.multipart_uploads("tt/")] == ["tt/v0.9.0/embeddings/item_embeddings.npy"]
    times["tt/v0.9.0/embeddings/item_embeddings.npy"] -= d.incomplete_grace_s + 1     # an hour later
    d.deploy_model(make_bundle(tmp_path / "b2", seed=2), "v1.1.0")
    assert b.multipart_uploads("tt/") == []


# ------------------------------------------------------------------ a killed local deploy
_KILLED_DEPLOY = """
import os, signal
from pathlib import Path
from registry.deploy.staging import staging_dir
from registry.deploy.storage.local import LocalFolderBackend

backend = LocalFolderBackend({store!r}, "model-artifacts")
with staging_dir("sync"), staging_dir("deploy") as staging:
    (staging / "manifest.json").write_text("{{}}")

    def killed(tmp):
        Path(tmp).write_bytes(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)

    backend._atomic_write(backend._path("tt/v1.0.0/embeddings/item_embeddings.npy"), killed)
"""


def test_a_killed_local_deploys_temp_files_and_staging_folders_are_swept(tmp_path, monkeypatch) -> None:
    from registry.deploy.staging import staging_dir
    from registry.deploy.storage.base import owner_tag
    from registry.deploy.storage.local import LocalFolderBackend

    tmpdir, store = tmp_path / "tmp", tmp_path / "store"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    proc = subprocess.run([sys.executable, "-c", _KILLED_DEPLOY.format(store=str(store))], timeout=60,
                          env={**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == -signal.SIGKILL
    folder = store / "model-artifacts" / "tt" / "v1.0.0"
    assert len(list(folder.rglob(".upload-*"))) == 1
    assert len(list(tmpdir.glob("towerops-deploy-*"))) == 1 and len(list(tmpdir.glob("towerops-sync-*"))) == 1
    live = folder / f".upload-{owner_tag()}-live0000"                      # a live writer's (this process)
    live.write_bytes(b"in progress")
    elsewhere = folder / ".upload-otherhost-1-abcd0000"                     # another host's: never judged
    elsewhere.write_bytes(b"?")

    with staging_dir("deploy") as mine:                                      # a live run's staging folder
        d = _deployer(LocalFolderBackend(store, "model-artifacts"))
        result = d.deploy_model(make_bundle(tmp_path / "b"), "v1.0.0")
        assert mine.is_dir()
    assert sorted(p.name for p in folder.rglob(".upload-*")) == sorted([live.name, elsewhere.name])
    assert [p for p in tmpdir.glob("towerops-*") if p.suffix != ".lock"] == []  # the pointer lock file stays by design
    assert result.activated and d.remote_complete("v1.0.0") is not None


# ------------------------------------------------------------------ what "bucket does not exist" means
def test_a_route_404_is_not_reported_as_a_missing_bucket(tmp_path) -> None:
    from registry.deploy.storage import BucketNotFound, PermanentStorageError
    from registry.deploy.storage.supabase import SupabaseStorageBackend

    server = StorageServer(tmp_path / "root", gateway=False).start()        # a storage server, no gateway
    try:
        server.create_bucket("model-artifacts")
        with pytest.raises(PermanentStorageError) as info:                   # SUPABASE_URL pointed at it
            SupabaseStorageBackend("model-artifacts", url=server.url, key=server.service_key).check()
        assert not isinstance(info.value, BucketNotFound) and "does not exist" not in str(info.value)
        assert "Route GET:/storage/v1/bucket/model-artifacts not found" in str(info.value)
        assert "TOWEROPS_SUPABASE_STORAGE_URL" in str(info.value)
        SupabaseStorageBackend("model-artifacts", storage_url=server.url, key=server.service_key).check()  # the fix
    finally:
        server.kill()


def test_a_role_less_jwt_gets_its_own_message(storage_server) -> None:
    from registry.deploy.storage import StorageAuthError
    from registry.deploy.storage.supabase import SupabaseStorageBackend

    storage_server.admin("reset", {})
    key = make_jwt(storage_server.jwt_secret, None)
    with pytest.raises(StorageAuthError, match="JWT without a role claim.*service-role key") as info:
        SupabaseStorageBackend("model-artifacts", url=storage_server.url, key=key)
    assert "does not exist" not in str(info.value) and key not in str(info.value)
    assert storage_server.stats()["requests"] == {}                          # refused before asking


def test_an_endpoint_that_is_not_s3_is_not_reported_as_a_missing_bucket(storage_server) -> None:
    from registry.deploy.storage import BucketNotFound, PermanentStorageError
    from registry.deploy.storage.s3 import S3Backend

    b = S3Backend("model-artifacts", endpoint_url=storage_server.url, region="us-east-1", access_key="k",
                  secret_key="s")
    with pytest.raises(PermanentStorageError) as info:
        b.check()
    assert not isinstance(info.value, BucketNotFound) and "does not exist" not in str(info.value)
    assert "not an S3 endpoint" in str(info.value) and "TOWEROPS_S3_ENDPOINT_URL" in str(info.value)


# ------------------------------------------------------------------ Cache-Control, MB/s, retries
def test_the_same_cache_control_on_both_backends(make_backend, tmp_path) -> None:
    bundle = make_bundle(tmp_path / "b")
    seen = {}
    for kind in ("s3", "supabase"):
        b = make_backend(kind)
        _deployer(b).deploy_model(bundle, "v1.0.0")
        seen[kind] = {key: b.stat(key).cache_control for key in (
            "tt/v1.0.0/embeddings/item_embeddings.npy", "tt/v1.0.0/manifest.json", "tt/production.json")}
    assert seen["s3"] == seen["supabase"] == {"tt/v1.0.0/embeddings/item_embeddings.npy": "max-age=3600",
                                              "tt/v1.0.0/manifest.json": "max-age=60",
                                              "tt/production.json": "max-age=0"}


def test_mb_per_s_counts_upload_time_only(tmp_path) -> None:
    import shutil

    from registry.deploy.storage.local import LocalFolderBackend

    bundle = make_bundle(tmp_path / "b")
    shutil.rmtree(bundle / "tfjs")                                         # the deployment exports TF.js itself
    d = _deployer(LocalFolderBackend(tmp_path / "store", "model-artifacts"))

    def slow_tfjs_export(model_dir, staging):                              # stands in for the TF.js conversion
        time.sleep(1.0)
        out = staging / "tfjs" / "user_tower"
        out.mkdir(parents=True)
        (out / "model.json").write_text("{}")
        return {"tfjs": staging / "tfjs"}

    d.prepare_tfjs = slow_tfjs_export
    result = d.deploy_model(bundle, "v1.0.0")
    assert result.seconds >= 1.0 and 0 < result.upload_seconds <= result.seconds - 1.0
    assert result.mb_per_s == pytest.approx(result.bytes_uploaded / 1e6 / result.upload_seconds)
    assert result.to_dict()["mb_per_s"] == round(result.mb_per_s, 3) and result.to_dict()["upload_seconds"] > 0


@pytest.mark.parametrize("kind", ["s3", "supabase"])
def test_backends_do_not_retry_the_one_policy_does(make_backend, request, kind) -> None:
    from registry.deploy.storage import RetryPolicy, TransientStorageError

    b = make_backend(kind)
    sent = []
    if kind == "s3":
        from botocore.awsrequest import AWSResponse

        class Raw:
            def stream(self, **_):
                yield b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"

        def slow_down_once(request, **_):                                  # a 503 from the wire, once
            sent.append(request.url)
            return AWSResponse(request.url, 503, {}, Raw()) if len(sent) == 1 else None

        b.client.meta.events.register("before-send.s3.PutObject", slow_down_once)
        count = lambda: len(sent)
    else:
        server = request.getfixturevalue("storage_server")
        server.admin("reset", {})
        server.faults(rules=[{"route": "upload", "count": 1, "status": "500"}])
        count = lambda: server.stats()["requests"]["upload"]
    with pytest.raises(TransientStorageError):
        b.put_bytes("m/x.json", b"{}", "application/json")
    assert count() == 1                                                     # the backend did not retry
    RetryPolicy(attempts=3, backoff_s=0.0).call("put", lambda: b.put_bytes("m/x.json", b"{}", "application/json"))
    assert count() == 2 and b.get_bytes("m/x.json") == b"{}"

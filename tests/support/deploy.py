"""Helpers for deployment tests: small fake bundles with the layout deployments need, and
fast deployment configs."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from registry.deploy.config import DeployConfig
from registry.deploy.storage import RetryPolicy

BUNDLE_FILES = {
    "metadata.json": None, "config.json": 64, "history.json": 32,
    "keras/two_tower.keras": 3000, "keras/user_tower.keras": 2000, "keras/item_tower.keras": 1500,
    "saved_model/user_tower/saved_model.pb": 900, "saved_model/user_tower/variables/variables.index": 100,
    "saved_model/user_tower/variables/variables.data-00000-of-00001": 4000,
    "saved_model/item_tower/saved_model.pb": 800, "saved_model/item_tower/variables/variables.index": 90,
    "saved_model/item_tower/variables/variables.data-00000-of-00001": 3500,
    "preprocessing/pipeline.joblib": 1200, "preprocessing/spec.json": 200,
    "embeddings/item_embeddings.npy": 6000, "embeddings/item_ids.json": 300,
    "tfjs/user_tower/model.json": 400, "tfjs/user_tower/group1-shard1of1.bin": 2500,
    "tfjs/item_tower/model.json": 400, "tfjs/item_tower/group1-shard1of1.bin": 2000,
    "users/user_ids.json": 100, "checkpoints/best.weights.h5": 700,
}
# what a deployment uploads from the bundle above (users/, checkpoints/, history.json stay behind)
DEPLOYED = sorted(k for k in BUNDLE_FILES if not k.startswith(("users/", "checkpoints/")) and k != "history.json")


def make_bundle(path: Path, seed: int = 0, big: int = 0) -> Path:
    """A fake bundle (random bytes; a `tfjs/` export already present). `seed` changes every
    file's content; `big` adds that many bytes to the item embeddings."""
    import random

    rng = random.Random(seed)
    for rel, size in BUNDLE_FILES.items():
        p = path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if rel == "metadata.json":
            p.write_text(json.dumps({"format": 1, "embedding_dim": 32, "feature_schema_hash": f"fsh{seed}",
                                     "final_metrics": {"val_loss": 1.5 + seed}}))
        else:
            n = size + (big if rel == "embeddings/item_embeddings.npy" else 0)
            p.write_bytes(rng.randbytes(n) if n < 1 << 20 else os.urandom(n))
    return path


def fast_config(**overrides) -> DeployConfig:
    """Small retries (tests must not sleep long) and the fake bundle's own tfjs folder."""
    retry = overrides.pop("retry", RetryPolicy(attempts=3, backoff_s=0.05, max_backoff_s=0.2))
    cfg = DeployConfig(retry=retry, **overrides)
    cfg.validate()
    return cfg


def open_backend_for(kind: str, tmp_path: Path, request, bucket: str | None = None) -> object:
    """A backend of `kind` on a fresh bucket (created on the server)."""
    bucket = bucket or f"t-{uuid.uuid4().hex[:10]}"
    if kind == "local":
        from registry.deploy.storage.local import LocalFolderBackend

        return LocalFolderBackend(tmp_path / "store", bucket)
    if kind == "s3":
        import boto3

        from registry.deploy.storage.s3 import S3Backend

        url = request.getfixturevalue("moto_url")
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=bucket)
        return S3Backend(bucket, endpoint_url=url, region="us-east-1", access_key="testing", secret_key="testing",
                         multipart_threshold_mb=0.01, multipart_chunk_mb=5)
    from registry.deploy.storage.supabase import SupabaseStorageBackend

    server = request.getfixturevalue("storage_server")
    server.create_bucket(bucket)
    return SupabaseStorageBackend(bucket, url=server.url, key=server.service_key)


class FailAfter:
    """A backend (delegating everything) whose uploads fail for good after `n` files, like a
    file over the server's size limit: the deployment stops with part of the folder written."""

    def __init__(self, inner, n: int) -> None:
        self.inner = inner
        self.left = n

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put_file(self, key, *args, **kwargs):
        from registry.deploy.storage import ObjectTooLarge

        if self.left <= 0:
            raise ObjectTooLarge(f"upload {key}: 413 Payload too large: The object exceeded the maximum allowed size",
                                 413, "Payload too large")
        self.left -= 1
        return self.inner.put_file(key, *args, **kwargs)


def imitate_supabase_s3_deletes(s3_backend, deny_existing: bool = False) -> list[list[str]]:
    """Make an S3Backend on moto answer DeleteObjects as Supabase's S3 endpoint does: each key
    that does not exist comes back as an AccessDenied error, not as deleted (moto's answer);
    with `deny_existing` existing keys are refused too (a real permission problem). Returns
    the list the refused keys of each call are appended to."""
    from botocore.exceptions import ClientError

    client = s3_backend.client
    refused: list[list[str]] = []

    def before(params, context, **_):
        keys = [o["Key"] for o in params.get("Delete", {}).get("Objects", [])]
        denied = []
        for key in keys:
            try:
                client.head_object(Bucket=params["Bucket"], Key=key)
                if deny_existing:
                    denied.append(key)
            except ClientError:
                denied.append(key)
        context["denied"] = denied
        # what the server refuses it does not delete; moto needs at least one key in the request
        params["Delete"]["Objects"] = [{"Key": k} for k in keys if k not in denied] or [{"Key": "__no-such-key__"}]

    def after(parsed, context, **_):
        denied = context.get("denied") or []
        refused.append(denied)
        parsed["Deleted"] = [d for d in parsed.get("Deleted", []) if d.get("Key") not in (*denied, "__no-such-key__")]
        parsed["Errors"] = list(parsed.get("Errors", [])) + [
            {"Key": k, "Code": "AccessDenied",
             "Message": "You do not have permission to delete this object or the object doesn't exists"}
            for k in denied]

    client.meta.events.register("before-parameter-build.s3.DeleteObjects", before)
    client.meta.events.register("after-call.s3.DeleteObjects", after)
    return refused


def dead_pid() -> int:
    """The pid of a process that has just exited (not reused this soon)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid

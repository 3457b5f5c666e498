"""Storage backends for deployments: a local folder (the embedded default), Supabase
Storage's REST API (storage3), and the S3 protocol (boto3). One interface, `StorageBackend`."""

from __future__ import annotations

import os
from typing import Any

from ml.settings import get_settings
from registry.deploy.storage.base import (
    BucketNotFound,
    InvalidObjectKey,
    ObjectStat,
    ObjectTooLarge,
    PermanentStorageError,
    RetryPolicy,
    StorageAuthError,
    StorageBackend,
    StorageError,
    TransientStorageError,
)

BACKENDS = ("auto", "local", "supabase", "s3")

__all__ = ["BACKENDS", "BucketNotFound", "InvalidObjectKey", "ObjectStat", "ObjectTooLarge", "PermanentStorageError", "RetryPolicy",
           "StorageAuthError", "StorageBackend", "StorageError", "TransientStorageError", "open_backend",
           "resolve_backend_kind"]


def resolve_backend_kind(kind: str) -> str:
    """`auto`: Supabase when SUPABASE_URL / TOWEROPS_SUPABASE_STORAGE_URL is set, S3 when
    TOWEROPS_S3_ENDPOINT_URL is set, else the local folder. $TOWEROPS_DEPLOY_BACKEND wins."""
    settings = get_settings()
    kind = (settings.deploy_backend or kind or "auto").strip().lower()
    if kind not in BACKENDS:
        raise ValueError(f"storage backend {kind!r} is unknown: use one of {', '.join(BACKENDS)} "
                         "(storage.backend in configs/deployment.yaml or $TOWEROPS_DEPLOY_BACKEND)")
    if kind != "auto":
        return kind
    if os.environ.get("SUPABASE_URL") or settings.supabase_storage_url:
        return "supabase"
    if settings.s3_endpoint_url:
        return "s3"
    return "local"


def open_backend(kind: str, bucket: str, local_dir: str | None = None, **options: Any) -> StorageBackend:
    """The backend `kind` for `bucket`; credentials are read from the environment."""
    kind = resolve_backend_kind(kind)
    if kind == "local":
        from registry.deploy.storage.local import LocalFolderBackend

        root = get_settings().deploy_dir or local_dir or "deployments"
        return LocalFolderBackend(root, bucket)
    if kind == "s3":
        from registry.deploy.storage.s3 import S3Backend

        keep = {k: v for k, v in options.items() if k in ("multipart_threshold_mb", "multipart_chunk_mb",
                                                          "max_concurrency", "read_timeout_s")}
        return S3Backend(bucket, **keep)
    from registry.deploy.storage.supabase import SupabaseStorageBackend

    keep = {k: v for k, v in options.items() if k in ("timeout_s",)}
    return SupabaseStorageBackend(bucket, **keep)

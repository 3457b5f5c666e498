"""The S3 protocol through boto3: Supabase's S3 endpoint (`<project>.storage.supabase.co/
storage/v1/s3`, path-style, the project's region, keys from the dashboard) or any S3.

Configuration comes from the environment (never from files in the repo):
TOWEROPS_S3_ENDPOINT_URL (empty = AWS), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION.

Each object carries its sha256 as user metadata (`x-amz-meta-sha256`) and the same
Cache-Control as on the other backends (Supabase stores `no-cache` for an object sent without
one). botocore's own retries are off so the deployer's backoff policy is the only one (and
logs each retry).

Where Supabase's S3 endpoint differs from AWS and moto (supabase/storage v1.11): DeleteObjects
answers AccessDenied for a key that does not exist (checked with a HEAD, then ignored); an
interrupted multipart upload stays until aborted (aborted on failure, swept on the next run);
a key outside its character rule gets a bare 400 (the deployer checks keys before uploading).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable

from ml.logs import get_logger
from ml.settings import get_settings
from registry.deploy.storage.base import (
    DEFAULT_CACHE_CONTROL,
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
    invalid_key_characters,
)

log = get_logger("deployment")

_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
               "AuthorizationHeaderMalformed", "InvalidSecurity", "Forbidden", "403", "401"}
_TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling",
                    "ThrottlingException", "RequestTimeTooSkewed", "500", "502", "503", "504"}
_MISSING_CODES = {"NoSuchKey", "NotFound", "404"}


class S3Backend(StorageBackend):
    """Objects in an S3 bucket (path-style addressing)."""

    kind = "s3"

    def __init__(self, bucket: str, endpoint_url: str | None = None, region: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None, session_token: str | None = None,
                 multipart_threshold_mb: float = 64, multipart_chunk_mb: float = 16, max_concurrency: int = 4,
                 connect_timeout_s: float = 10, read_timeout_s: float = 120) -> None:
        if not bucket:
            raise ValueError("S3 bucket name is empty; set supabase.storage_bucket")
        self.bucket = bucket
        self.endpoint_url = endpoint_url or get_settings().s3_endpoint_url or None
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self._access_key = access_key or os.environ.get("AWS_ACCESS_KEY_ID")
        self._secret_key = secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
        self._session_token = session_token or os.environ.get("AWS_SESSION_TOKEN")
        self.multipart_threshold = int(multipart_threshold_mb * 1024 * 1024)
        self.multipart_chunk = int(multipart_chunk_mb * 1024 * 1024)
        self.max_concurrency = max_concurrency
        self.connect_timeout_s, self.read_timeout_s = connect_timeout_s, read_timeout_s
        self._client: Any = None

    # ------------------------------------------------------------------ plumbing
    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                s3={"addressing_style": "path"},
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=self.connect_timeout_s, read_timeout=self.read_timeout_s,
                request_checksum_calculation="when_required", response_checksum_validation="when_required",
                max_pool_connections=max(10, self.max_concurrency * 4),
            )
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region, aws_access_key_id=self._access_key,
                aws_secret_access_key=self._secret_key, aws_session_token=self._session_token, config=config)
        return self._client

    def describe(self) -> str:
        return f"s3://{self.bucket} at {self.endpoint_url or 'AWS'} ({self.region})"

    def _error(self, exc: BaseException, what: str, key: str | None = None) -> BaseException:
        """Map a boto3/botocore exception to our classes (the caller raises it)."""
        from boto3.exceptions import S3UploadFailedError
        from botocore import exceptions as bx

        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, bx.ClientError):
            exc = exc.__context__
        where = f"{what} s3://{self.bucket}/{key or ''} at {self.endpoint_url or 'AWS'}"
        if isinstance(exc, bx.ClientError):
            err = exc.response.get("Error", {}) or {}
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            msg = err.get("Message") or code
            if status >= 500 or status in (408, 429) or code in _TRANSIENT_CODES:
                return TransientStorageError(f"{where}: {status} {code} {msg}")
            if code == "NoSuchBucket":
                return BucketNotFound(f"{where}: bucket {self.bucket!r} does not exist; create it (Supabase: Storage "
                                      "→ New bucket) or set supabase.storage_bucket", status, code)
            if code in _AUTH_CODES or status in (401, 403):
                return StorageAuthError(f"{where}: the S3 credentials were refused ({status} {code}); check "
                                        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (Supabase: Project Settings → "
                                        "Storage → S3 access keys) and AWS_REGION", status, code)
            if code == "EntityTooLarge" or status == 413:
                return ObjectTooLarge(f"{where}: the object exceeds the server's size limit ({msg}); raise the "
                                      "bucket's file size limit", status, code)
            if status == 400 and key and invalid_key_characters(key):  # Supabase: a bare 400 on HEAD
                return InvalidObjectKey(f"{where}: 400 {code}: the key holds {invalid_key_characters(key)}; "
                                        f"Supabase Storage accepts only ASCII {KEY_CHARACTERS} in keys", status, code)
            return PermanentStorageError(f"{where}: {status} {code}: {msg}", status, code)
        if isinstance(exc, bx.NoCredentialsError):
            return StorageAuthError(f"{where}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionError, bx.ConnectionClosedError,
                            bx.ReadTimeoutError, bx.ConnectTimeoutError, bx.ResponseStreamingError,
                            bx.IncompleteReadError, ConnectionError, TimeoutError)):
            return TransientStorageError(f"{where}: {exc}")
        if isinstance(exc, bx.ParamValidationError):
            return PermanentStorageError(f"{where}: {exc}")
        return exc

    def _call(self, what: str, key: str | None, fn, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - mapped below
            mapped = self._error(exc, what, key)
            if mapped is exc:
                raise
            raise mapped from None

    @staticmethod
    def _missing(exc: BaseException) -> bool:
        from botocore.exceptions import ClientError

        if not isinstance(exc, ClientError):
            return False
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code in _MISSING_CODES

    # ------------------------------------------------------------------ interface
    def check(self) -> None:
        """HEAD the bucket; a 404 is confirmed with a listing, whose error code tells a missing
        bucket (NoSuchBucket) from an endpoint that does not speak S3 at that URL."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:  # HEAD has no body: 404 alone does not say what is missing
            if int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0) != 404:
                raise self._error(exc, "open bucket") from None
        except Exception as exc:  # noqa: BLE001
            mapped = self._error(exc, "open bucket")
            if mapped is exc:
                raise
            raise mapped from None
        try:
            self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                raise BucketNotFound(f"open bucket s3://{self.bucket} at {self.endpoint_url or 'AWS'}: bucket "
                                     f"{self.bucket!r} does not exist; create it (Supabase: Storage → New bucket) "
                                     "or set supabase.storage_bucket", 404, code) from None
            if code in ("404", "NotFound", ""):
                raise PermanentStorageError(
                    f"open bucket s3://{self.bucket} at {self.endpoint_url or 'AWS'}: the endpoint answers 404 "
                    "without an S3 error code, so it is not an S3 endpoint at this URL; set TOWEROPS_S3_ENDPOINT_URL "
                    "to the S3 URL (Supabase: <project>.storage.supabase.co/storage/v1/s3, or <storage server>/s3)",
                    404, code or "404") from None
            raise self._error(exc, "open bucket") from None
        except Exception as exc:  # noqa: BLE001
            mapped = self._error(exc, "open bucket")
            if mapped is exc:
                raise
            raise mapped from None

    def put_file(self, key: str, path: Path, digest: FileDigest, content_type: str,
                 cache_control: str | None = None) -> None:
        from boto3.s3.transfer import TransferConfig

        extra = {"Metadata": {"sha256": digest.sha256}, "ContentType": content_type,
                 "CacheControl": cache_control or DEFAULT_CACHE_CONTROL}
        config = TransferConfig(multipart_threshold=self.multipart_threshold, multipart_chunksize=self.multipart_chunk,
                                max_concurrency=self.max_concurrency, use_threads=self.max_concurrency > 1)
        try:
            self._call("upload", key, self.client.upload_file, str(path), self.bucket, key, ExtraArgs=extra,
                       Config=config)
        except BaseException:
            if digest.size >= self.multipart_threshold:  # the server keeps the parts until aborted
                self._abort_uploads(key, exact=True)
            raise

    def put_bytes(self, key: str, data: bytes, content_type: str, cache_control: str | None = None) -> None:
        extra: dict[str, Any] = {"Metadata": {"sha256": hashlib.sha256(data).hexdigest()}, "ContentType": content_type,
                                 "CacheControl": cache_control or DEFAULT_CACHE_CONTROL}
        self._call("upload", key, self.client.put_object, Bucket=self.bucket, Key=key, Body=data, **extra)

    def multipart_uploads(self, prefix: str) -> list[dict[str, Any]]:
        """Multipart uploads in progress under `prefix`: {Key, UploadId, Initiated (epoch s)}."""
        out: list[dict[str, Any]] = []
        paginator = self.client.get_paginator("list_multipart_uploads")

        def run() -> None:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for up in page.get("Uploads", []) or []:
                    initiated = up.get("Initiated")
                    out.append({"Key": up["Key"], "UploadId": up["UploadId"],
                                "Initiated": initiated.timestamp() if initiated is not None else None})

        self._call("list multipart uploads", prefix, run)
        return out

    def _abort_uploads(self, prefix: str, exact: bool = False, started_before: float | None = None) -> int:
        """Abort multipart uploads under `prefix` (only `prefix` itself with `exact`) initiated
        before `started_before`; best effort on a failure path (logged, never raised)."""
        try:
            uploads = self.multipart_uploads(prefix)
        except Exception as exc:  # noqa: BLE001 - the next run sweeps what this one cannot
            log.warning("could not list multipart uploads under s3://%s/%s to abort them: %s", self.bucket, prefix, exc)
            return 0
        aborted = 0
        for up in uploads:
            if exact and up["Key"] != prefix:
                continue
            if started_before is not None and up["Initiated"] is not None and up["Initiated"] >= started_before:
                continue
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                aborted += 1
            except Exception as exc:  # noqa: BLE001
                log.warning("could not abort multipart upload %s of s3://%s/%s: %s", up["UploadId"], self.bucket,
                            up["Key"], exc)
        if aborted:
            log.info("aborted %d interrupted multipart upload(s) under s3://%s/%s", aborted, self.bucket, prefix)
        return aborted

    def sweep_incomplete(self, prefix: str, started_before: float) -> int:
        return self._abort_uploads(prefix, started_before=started_before)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
            return obj["Body"].read()
        except Exception as exc:  # noqa: BLE001
            if self._missing(exc):
                return None
            mapped = self._error(exc, "download", key)
            if mapped is exc:
                raise
            raise mapped from None

    def hash_object(self, key: str) -> FileDigest | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
            sha, size = hashlib.sha256(), 0
            for chunk in obj["Body"].iter_chunks(1024 * 1024):
                sha.update(chunk)
                size += len(chunk)
            return FileDigest(size, sha.hexdigest())
        except Exception as exc:  # noqa: BLE001
            if self._missing(exc):
                return None
            mapped = self._error(exc, "download", key)
            if mapped is exc:
                raise
            raise mapped from None

    def stat(self, key: str) -> ObjectStat | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            if self._missing(exc):
                return None
            mapped = self._error(exc, "stat", key)
            if mapped is exc:
                raise
            raise mapped from None
        etag = head.get("ETag")
        return ObjectStat(key, int(head["ContentLength"]), (head.get("Metadata") or {}).get("sha256"), etag,
                          cache_control=head.get("CacheControl"))

    def list(self, prefix: str) -> list[ObjectStat]:
        out: list[ObjectStat] = []
        paginator = self.client.get_paginator("list_objects_v2")

        def run() -> None:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []) or []:
                    modified = obj.get("LastModified")
                    out.append(ObjectStat(obj["Key"], int(obj["Size"]), None, obj.get("ETag"),
                                          modified=modified.timestamp() if modified is not None else None))

        self._call("list", prefix, run)
        return out

    def list_dirs(self, prefix: str) -> list[str]:
        prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        names: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")

        def run() -> None:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                for cp in page.get("CommonPrefixes", []) or []:
                    names.append(cp["Prefix"][len(prefix):].rstrip("/"))

        self._call("list", prefix, run)
        return sorted(names)

    def delete(self, keys: Iterable[str]) -> None:
        """DeleteObjects in batches of 1000; a key reported AccessDenied is ignored when a HEAD
        shows it is gone (Supabase's answer for a key that does not exist)."""
        keys = list(keys)
        for i in range(0, len(keys), 1000):
            batch = keys[i:i + 1000]
            resp = self._call("delete", batch[0], self.client.delete_objects, Bucket=self.bucket,
                              Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            errors = [e for e in resp.get("Errors", []) or [] if e.get("Code") not in _MISSING_CODES]
            errors = [e for e in errors if e.get("Code") != "AccessDenied" or self.stat(str(e.get("Key"))) is not None]
            if errors:
                raise PermanentStorageError(f"delete in s3://{self.bucket} failed for {len(errors)} object(s): "
                                            f"{errors[0].get('Key')}: {errors[0].get('Code')} {errors[0].get('Message')}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

"""Deploying model versions to storage (Supabase Storage, S3, or a local folder) so the
app can load whatever holds production.

Layout in the bucket (default `model-artifacts`):

    <model>/<vX.Y.Z>/manifest.json            written after every file is verified
    <model>/<vX.Y.Z>/keras/ saved_model/ tfjs/ preprocessing/ embeddings/ metadata.json config.json
    <model>/production.json                   the pointer, moved last

Order of a deployment (readers never see a half-deployed version):
  1. preflight: the bucket and key work, the `model_versions` table exists (created if missing);
  2. every object key checked against the storage server's character rule; leftovers of
     killed runs (multipart uploads, temporary files, staging folders) swept;
  3. upload each file unless the same size + sha256 is already there (resumable, idempotent);
  4. verify every file (size and recorded sha256; small files downloaded and hashed);
  5. upload `manifest.json` (each file's size and sha256, run id, registry version, metrics, time);
  6. move `production.json`, then switch the `model_versions` row (`is_active`) in one
     transaction; if that transaction fails the previous pointer is put back;
  7. retention: keep at most `max_versions` complete folders, never production nor its
     rollback target; incomplete leftovers of failed uploads are removed.

Transient storage errors are retried with exponential backoff (the one RetryPolicy);
4xx-class errors stop at once with a message naming what to fix, before anything is activated.

The steps live in their own modules, mixed into `SupabaseDeployer`: upload.py and verify.py,
activation.py, retention.py, rollback.py (shared storage access in core.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ml.logs import get_logger
from registry.deploy.config import _MODEL_RE, DeployConfig, _default_model_name, deploy_dsn, load_deploy_config
from registry.deploy.result import DeployResult, _protected, version_folder
from registry.deploy.rollback import RollbackSteps
from registry.deploy.storage import StorageBackend, open_backend
from registry.deploy.storage.base import RetryPolicy, StorageError
from registry.deploy.table import ModelVersionsTable
from registry.deploy.upload import UploadSteps

__all__ = ["DeployResult", "SupabaseDeployer"]

log = get_logger("deployment")


class SupabaseDeployer(UploadSteps, RollbackSteps):
    """Deploys model bundles as `<model>/<vX.Y.Z>/` to the configured storage backend
    and moves production to them; see the module docstring for the order of steps.

    >>> SupabaseDeployer().deploy_model(model_dir="models/two_tower", version="v1.2.0", description="...")
    """

    def __init__(self, config: DeployConfig | str | Path | None = None, backend: StorageBackend | None = None,
                 dsn: str | None = None, model_name: str | None = None, use_table: bool | None = None,
                 progress: bool | None = None) -> None:
        self.config = config if isinstance(config, DeployConfig) else load_deploy_config(config)
        self.config.validate()
        self.backend = backend or open_backend(self.config.backend, self.config.storage_bucket, self.config.local_dir,
                                               timeout_s=self.config.timeout_s,
                                               multipart_chunk_mb=self.config.multipart_chunk_mb)
        self.model_name = model_name or self.config.model_name or _default_model_name()
        if not _MODEL_RE.match(self.model_name):
            raise ValueError(f"model name {self.model_name!r} is not valid (letters, digits, _ . -)")
        the_dsn = deploy_dsn(dsn)
        if use_table is False:
            the_dsn = None
        elif use_table and not the_dsn:
            raise ValueError("the model_versions table needs a database: set SUPABASE_DB_URL or TOWEROPS_DEPLOY_DSN")
        self.table = ModelVersionsTable(the_dsn, self.config.model_table) if the_dsn else None
        self.retry = RetryPolicy.coerce(self.config.retry)
        self.progress = progress
        self._checked = False

    def deploy_model(self, model_dir: str | Path, version: str, description: str | None = None, *,
                     model_name: str | None = None, registry_version: str | None = None, run_id: str | None = None,
                     metrics: Mapping[str, float] | None = None, activate: bool = True, action: str = "promote",
                     stack: Sequence[str] | None = None, protect: Iterable[str] = (),
                     precondition: Callable[[], bool] | None = None, source: str | None = None,
                     extra_dirs: Mapping[str, str | Path] | None = None) -> DeployResult:
        """Upload a model bundle as `<model>/<version>/`, verify it, and (by default) make it production.

        Seed API: `SupabaseDeployer().deploy_model(model_dir=..., version="v1.2.0", description=...)`.
        A re-run with the same bundle uploads nothing; a run killed midway resumes.
        """
        model_name = model_name or self.model_name
        version = version_folder(version)
        t0 = time.time()
        meta: dict[str, Any] = {"registry_version": registry_version, "run_id": run_id, "description": description,
                                "source": source or str(Path(model_dir).resolve())}
        if metrics is not None:
            meta["metrics"] = {k: float(v) for k, v in metrics.items()}
        manifest, result = self.upload_version(model_dir, version, meta, model_name, extra_dirs)
        if activate:
            self.activate(version, model_name, manifest=manifest, action=action, stack=stack, protect=protect,
                          precondition=precondition, description=description, result=result)
        else:
            if self.table is not None:
                self.table.record(self._row(model_name, version, manifest, description))
            current = self.pointer(model_name)
            keep = {version, *(_protected(current, self.config.rollback_enabled)), *protect}
            try:
                result.pruned = self.prune(model_name, keep)
            except (StorageError, ConnectionError, OSError) as exc:
                log.warning("retention skipped for %s: %s", model_name, exc)
        result.seconds = time.time() - t0
        log.info("%s", result.describe())
        return result

    def close(self) -> None:
        self.backend.close()

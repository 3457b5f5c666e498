"""Deploying model versions to storage (Supabase Storage, S3, or a local folder) so the
app can load whatever holds production.

Layout in the bucket (default `model-artifacts`):

    <model>/<vX.Y.Z>/manifest.json            written after every file is verified
    <model>/<vX.Y.Z>/keras/ saved_model/ tfjs/ preprocessing/ embeddings/ metadata.json config.json
    <model>/production.json                   the pointer, moved last

Order of a deployment (readers never see a half-deployed version):
  1. preflight: the bucket and key work, the `model_versions` table exists (created if missing);
  2. upload each file unless the same size + sha256 is already there (resumable, idempotent);
  3. verify every file (size and recorded sha256; small files downloaded and hashed);
  4. upload `manifest.json` (each file's size and sha256, run id, registry version, metrics, time);
  5. move `production.json`, then switch the `model_versions` row (`is_active`) in one
     transaction; if that transaction fails the previous pointer is put back;
  6. retention: keep at most `max_versions` folders, never production nor its rollback target.

Transient storage errors are retried with exponential backoff; 4xx-class errors stop at
once with a message naming what to fix, before anything is activated.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ml.logs import get_logger
from registry.deploy.config import (
    _MODEL_RE,
    HISTORY_LIMIT,
    MANIFEST,
    MANIFEST_FORMAT,
    POINTER,
    REQUIRED,
    DeployConfig,
    _default_model_name,
    deploy_dsn,
    load_deploy_config,
)
from registry.deploy.result import DeployResult, VerificationError, _mb, _next_stack, _now, _protected, _read_json_file, version_folder
from registry.deploy.storage import StorageBackend, open_backend
from registry.deploy.storage.base import (
    FileDigest,
    ObjectStat,
    PermanentStorageError,
    StorageError,
    digest_bytes,
    digest_file,
    guess_content_type,
    join_key,
)
from registry.deploy.table import DeployDatabaseError, ModelVersionsTable
from registry.semver import SemVer

log = get_logger("deployment")

# ------------------------------------------------------------------------ the deployer
class SupabaseDeployer:
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
        self.retry = self.config.retry
        self.progress = progress
        self._checked = False

    # -------------------------------------------------------------- helpers
    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        return self.retry.call(what, fn, log)

    def prefix(self, version: str, model_name: str | None = None) -> str:
        return join_key(model_name or self.model_name, version_folder(version)) + "/"

    def pointer_key(self, model_name: str | None = None) -> str:
        return join_key(model_name or self.model_name, POINTER)

    def preflight(self) -> None:
        """Storage credentials and bucket first, then the table: fail before changing anything."""
        if self._checked:
            return
        self._call(f"open {self.backend.describe()}", self.backend.check)
        if self.table is not None:
            self.table.ensure_schema()
        self._checked = True

    def read_json(self, key: str) -> dict | None:
        data = self._call(f"read {key}", lambda: self.backend.get_bytes(key))
        if data is None:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def pointer(self, model_name: str | None = None) -> dict | None:
        """The production pointer of a model (None when nothing is deployed)."""
        return self.read_json(self.pointer_key(model_name))

    def _write_json(self, key: str, doc: Mapping[str, Any], cache_control: str) -> str:
        data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
        digest = digest_bytes(data)

        def put_and_check() -> None:
            self.backend.put_bytes(key, data, "application/json", cache_control)
            back = self.backend.get_bytes(key)
            if back is None or digest_bytes(back).sha256 != digest.sha256:
                raise VerificationError(f"{key} read back differs from what was written")

        self._call(f"write {key}", put_and_check)
        return digest.sha256

    # -------------------------------------------------------------- the upload set
    @staticmethod
    def check_bundle(model_dir: str | Path) -> Path:
        """The bundle folder, or FileNotFoundError naming what is missing."""
        root = Path(model_dir)
        if not (root / "metadata.json").is_file():
            raise FileNotFoundError(f"{root} is not a towerops model bundle (no metadata.json); pass the model_dir "
                                    "written by training (e.g. models/two_tower)")
        missing = [r for r in REQUIRED if not (root / r.rstrip("/")).exists()]
        if missing:
            raise FileNotFoundError(f"{root} lacks {', '.join(missing)}; a deployment needs the Keras towers, their "
                                    "SavedModels, the preprocessing and the item embeddings (re-export the bundle)")
        return root

    def collect(self, model_dir: str | Path, extra_dirs: Mapping[str, str | Path] | None = None
                ) -> dict[str, Path]:
        """{relative path: local file} of what goes into the version folder."""
        root = self.check_bundle(model_dir)
        extra = {k.strip("/"): Path(v) for k, v in (extra_dirs or {}).items()}
        files: dict[str, Path] = {}
        for item in self.config.include:
            name = item.strip("/")
            src = extra.get(name, root / name)
            if src.is_file():
                files[name] = src
            elif src.is_dir():
                for p in sorted(src.rglob("*")):
                    if p.is_file() and not p.name.startswith("."):
                        files[f"{name}/{p.relative_to(src).as_posix()}"] = p
            elif name == "tfjs" and not self.config.tfjs:
                continue
            elif item.endswith("/") or name in ("tfjs",):
                raise FileNotFoundError(f"{src} is missing: the deployment includes '{item}' (storage.include)")
        if MANIFEST in files:
            raise ValueError(f"{root} holds a {MANIFEST}; that name is reserved for the deployment manifest")
        return files

    def prepare_tfjs(self, model_dir: str | Path, staging: Path) -> dict[str, Path]:
        """TF.js export of the towers into `staging/tfjs` unless the bundle has one (ml.inference.tfjs)."""
        if not self.config.tfjs or "tfjs" not in [i.strip("/") for i in self.config.include]:
            return {}
        if (Path(model_dir) / "tfjs" / "user_tower" / "model.json").is_file():
            return {}
        try:
            from ml.inference.tfjs import export_tfjs
        except ImportError as exc:
            raise ValueError(f"TF.js export is not available ({exc}); set storage.tfjs: false in "
                             "configs/deployment.yaml to deploy without it") from None
        out = staging / "tfjs"
        try:
            export_tfjs(model_dir, out)
        except (ValueError, FileNotFoundError, NotImplementedError) as exc:
            raise ValueError(f"TF.js export of {model_dir} failed: {exc}; fix the bundle or set storage.tfjs: false "
                             "to deploy without it") from None
        return {"tfjs": out}

    def _digests(self, files: Mapping[str, Path]) -> dict[str, FileDigest]:
        with ThreadPoolExecutor(max_workers=min(self.config.workers, 4)) as pool:
            return dict(zip(files, pool.map(digest_file, files.values())))

    def build_manifest(self, model_name: str, version: str, digests: Mapping[str, FileDigest],
                       meta: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "model": model_name,
            "version": version,
            "semver": str(SemVer.parse(version)),
            "registry_version": meta.get("registry_version"),
            "run_id": meta.get("run_id"),
            "description": meta.get("description"),
            "metrics": dict(meta.get("metrics") or {}),
            "embedding_dim": meta.get("embedding_dim"),
            "feature_schema_hash": meta.get("feature_schema_hash"),
            "source": meta.get("source"),
            "created_at": _now(),
            "total_bytes": sum(d.size for d in digests.values()),
            "files": {rel: {"size": d.size, "sha256": d.sha256, "content_type": guess_content_type(rel)}
                      for rel, d in sorted(digests.items())},
        }

    # -------------------------------------------------------------- checks
    def _deep(self, size: int) -> bool:
        return self.config.verify == "full" or size <= self.config.verify_download_max_mb * 1024 * 1024

    def _matches(self, key: str, digest: FileDigest, st: ObjectStat | None, deep: bool) -> bool:
        """Whether the stored object is this file: its size, its recorded sha256, and, with
        `deep` or when no sha256 was recorded, the sha256 of its downloaded content."""
        if st is None or st.size != digest.size:
            return False
        if st.sha256 is not None and st.sha256 != digest.sha256:
            return False
        if st.sha256 is not None and (not deep or self.backend.kind == "local"):  # local stat hashed the file
            return True
        got = self.backend.hash_object(key)
        return got is not None and got.size == digest.size and got.sha256 == digest.sha256

    def remote_complete(self, version: str, model_name: str | None = None, deep: bool = False) -> dict | None:
        """The version folder's manifest when the folder is complete (every file present with
        its size and sha256), else None. Used to re-point without uploading."""
        model_name = model_name or self.model_name
        prefix = self.prefix(version, model_name)
        manifest = self.read_json(prefix + MANIFEST)
        if not manifest or not isinstance(manifest.get("files"), dict):
            return None
        bad: list[str] = []

        def check(rel: str, info: Mapping[str, Any]) -> None:
            digest = FileDigest(int(info["size"]), str(info["sha256"]))
            st = self._call(f"stat {prefix}{rel}", lambda: self.backend.stat(prefix + rel))
            if not self._call(f"check {prefix}{rel}", lambda: self._matches(prefix + rel, digest, st, deep)):
                bad.append(rel)

        self._parallel([(lambda r=r, i=i: check(r, i)) for r, i in manifest["files"].items()])
        if bad:
            log.warning("%s%s is incomplete: %d file(s) missing or different (%s)", prefix, MANIFEST, len(bad),
                        ", ".join(sorted(bad)[:5]))
            return None
        return manifest

    def _parallel(self, jobs: Sequence[Callable[[], Any]]) -> list[Any]:
        """Run jobs on the worker pool; the first exception cancels the rest and is raised."""
        if not jobs:
            return []
        stop = threading.Event()

        def guarded(job: Callable[[], Any]) -> Any:
            if stop.is_set():  # another job failed: start nothing new
                return None
            try:
                return job()
            except BaseException:
                stop.set()
                raise

        with ThreadPoolExecutor(max_workers=self.config.workers) as pool:
            futures = [pool.submit(guarded, j) for j in jobs]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            for f in futures:
                if f.done() and not f.cancelled() and f.exception() is not None:
                    raise f.exception()  # type: ignore[misc]
            return [f.result() for f in futures]

    # -------------------------------------------------------------- uploading
    def _progress(self, total: int) -> Any:
        import sys

        enabled = self.progress if self.progress is not None else sys.stderr.isatty()
        if not enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        progress = Progress(TextColumn("[bold]upload"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                            console=Console(stderr=True), transient=True)
        progress.start()
        progress.add_task("upload", total=total)
        return progress

    def upload_version(self, model_dir: str | Path, version: str, meta: Mapping[str, Any] | None = None,
                       model_name: str | None = None, extra_dirs: Mapping[str, str | Path] | None = None,
                       result: DeployResult | None = None) -> tuple[dict, DeployResult]:
        """Upload and verify a version folder and its manifest; moves nothing."""
        model_name = model_name or self.model_name
        version = version_folder(version)
        prefix = self.prefix(version, model_name)
        self.check_bundle(model_dir)  # bad input fails before anything is touched
        self.preflight()
        result = result or DeployResult(model_name, version, self.backend.describe(), prefix)
        t0 = time.time()
        with tempfile.TemporaryDirectory(prefix="towerops-deploy-") as tmp:
            staging = Path(tmp)
            extra = {**self.prepare_tfjs(model_dir, staging), **(extra_dirs or {})}
            files = self.collect(model_dir, extra)
            digests = self._digests(files)
            meta = dict(meta or {})
            bundle_meta = _read_json_file(Path(model_dir) / "metadata.json")
            meta.setdefault("metrics", bundle_meta.get("final_metrics") or {})
            meta.setdefault("embedding_dim", bundle_meta.get("embedding_dim"))
            meta.setdefault("feature_schema_hash", bundle_meta.get("feature_schema_hash"))
            manifest = self.build_manifest(model_name, version, digests, meta)
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")  # local first
            result.files, result.total_bytes = len(files) + 1, manifest["total_bytes"]

            remote = self.read_json(prefix + MANIFEST)
            same_files = bool(remote) and remote.get("files") == manifest["files"]
            pointer = self.pointer(model_name)
            if pointer and pointer.get("version") == version and not same_files and remote:
                raise ValueError(f"{prefix} holds production with different content; a version in production is "
                                 f"never overwritten: deploy this bundle under a new version (e.g. bump {version})")
            log.info("deploying %s %s (%d files, %s) to %s %s", model_name, version, len(files) + 1,
                     _mb(manifest["total_bytes"]), self.backend.describe(), prefix)
            self._upload_files(prefix, files, digests, result, reupload_ok=True)
            if same_files:
                manifest = remote  # unchanged version: keep the manifest already there (idempotent)
                result.skipped += 1
            else:
                stale = [o.key for o in self._call(f"list {prefix}", lambda: self.backend.list(prefix))
                         if o.key[len(prefix):] not in manifest["files"] and o.key != prefix + MANIFEST]
                if stale:
                    log.info("removing %d stale file(s) from %s", len(stale), prefix)
                    self._call(f"delete stale in {prefix}", lambda: self.backend.delete(stale))
                self._write_json(prefix + MANIFEST, manifest, cache_control="60")
                result.uploaded.append(prefix + MANIFEST)
        result.manifest_path = prefix + MANIFEST
        result.seconds = time.time() - t0
        log.info("%s %s: %d file(s) uploaded (%s), %d unchanged, verified in %.1fs (%.1f MB/s)", model_name, version,
                 len(result.uploaded), _mb(result.bytes_uploaded), result.skipped, result.seconds, result.mb_per_s)
        return manifest, result

    def _upload_files(self, prefix: str, files: Mapping[str, Path], digests: Mapping[str, FileDigest],
                      result: DeployResult, reupload_ok: bool) -> None:
        lock = threading.Lock()
        total = len(files)
        done = [0]
        progress = self._progress(sum(d.size for d in digests.values()))

        def one(rel: str) -> None:
            key, path, digest = prefix + rel, files[rel], digests[rel]
            deep = self._deep(digest.size)
            st = self._call(f"stat {key}", lambda: self.backend.stat(key))
            # unchanged when size + recorded sha256 match (that pair was verified when uploaded);
            # with verify: full the content is hashed again
            if self._call(f"check {key}", lambda: self._matches(key, digest, st, self.config.verify == "full")):
                with lock:
                    done[0] += 1
                    result.skipped += 1
                    if progress:
                        progress.advance(progress.task_ids[0], digest.size)
                log.debug("unchanged %s (%s, sha256 %s…)", key, _mb(digest.size), digest.sha256[:12])
                return
            for attempt in (1, 2):
                t = time.time()
                self._call(f"upload {key}", lambda: self.backend.put_file(key, path, digest, guess_content_type(rel)))
                st = self._call(f"stat {key}", lambda: self.backend.stat(key))
                if self._call(f"verify {key}", lambda: self._matches(key, digest, st, deep)):
                    break
                if attempt == 2 or not reupload_ok:
                    raise VerificationError(f"{key} does not match {path} after upload (stored size "
                                            f"{st.size if st else 'missing'}, expected {digest.size}, sha256 "
                                            f"{digest.sha256[:12]}…); check the storage server and re-run the sync")
                log.warning("%s did not verify after upload; uploading it again", key)
            dt = max(time.time() - t, 1e-6)
            with lock:
                done[0] += 1
                result.uploaded.append(key)
                result.bytes_uploaded += digest.size
                if progress:
                    progress.advance(progress.task_ids[0], digest.size)
                n = done[0]
            log.info("uploaded %d/%d %s (%s, %.1f MB/s)", n, total, key, _mb(digest.size), digest.size / 1e6 / dt)

        try:
            self._parallel([(lambda r=r: one(r)) for r in sorted(files, key=lambda r: -digests[r].size)])
        except PermanentStorageError:
            raise
        except StorageError as exc:
            raise type(exc)(f"{exc} (after {self.retry.attempts} attempts; nothing was activated: re-run the sync "
                            "to resume, files already uploaded are kept)") from None
        finally:
            if progress:
                progress.stop()

    # -------------------------------------------------------------- activation
    def _row(self, model_name: str, version: str, manifest: Mapping[str, Any], description: str | None) -> dict:
        return {"model_name": model_name, "version": version, "registry_version": manifest.get("registry_version"),
                "run_id": manifest.get("run_id"), "storage_backend": self.backend.kind,
                "storage_bucket": self.backend.bucket, "storage_path": self.prefix(version, model_name),
                "manifest": dict(manifest), "metrics": dict(manifest.get("metrics") or {}),
                "description": description if description is not None else manifest.get("description")}

    def activate(self, version: str, model_name: str | None = None, manifest: Mapping[str, Any] | None = None,
                 action: str = "promote", stack: Sequence[str] | None = None, protect: Iterable[str] = (),
                 precondition: Callable[[], bool] | None = None, description: str | None = None,
                 result: DeployResult | None = None) -> DeployResult:
        """Point production at an uploaded, complete version: pointer first, then the table row;
        then prune. Without `manifest` the folder is checked for completeness first (rollback)."""
        model_name = model_name or self.model_name
        version = version_folder(version)
        prefix = self.prefix(version, model_name)
        self.preflight()
        t0 = time.time()
        if manifest is None:
            manifest = self.remote_complete(version, model_name)
            if manifest is None:
                raise FileNotFoundError(f"{prefix} is not a complete deployment in {self.backend.describe()}; "
                                        "deploy it first (towerops sync --version N, or towerops deploy)")
        if result is None:  # re-pointing an already uploaded version
            files = len(manifest.get("files", {})) + 1
            result = DeployResult(model_name, version, self.backend.describe(), prefix, repointed_only=True,
                                  manifest_path=prefix + MANIFEST, files=files, skipped=files,
                                  total_bytes=int(manifest.get("total_bytes") or 0))
        result.registry_version = manifest.get("registry_version")
        lock = self.table.lock(model_name) if self.table is not None else None
        try:
            if precondition is not None and not precondition():
                result.superseded = True
                log.warning("%s %s uploaded but not activated: production moved to another version meanwhile",
                            model_name, version)
                return result
            old = self.pointer(model_name)
            result.previous = old.get("version") if old else None
            history = list(stack) if stack is not None else _next_stack(old, version, action)
            history = [version_folder(v) for v in history][-HISTORY_LIMIT:]
            if not history or history[-1] != version:
                history.append(version)
            manifest_sha = digest_bytes((json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()).sha256
            unchanged = (bool(old) and old.get("version") == version and old.get("history") == history
                         and old.get("manifest_sha256") == manifest_sha)
            active_row = self.table.active(model_name) if self.table is not None else None
            row_ok = self.table is None or (active_row is not None and active_row["version"] == version
                                            and active_row["manifest"] == dict(manifest))
            if unchanged and row_ok:
                log.info("%s %s already holds production; pointer and table unchanged", model_name, version)
                result.activated = result.unchanged = True
            else:
                pointer = {
                    "model": model_name, "version": version, "semver": str(SemVer.parse(version)),
                    "registry_version": manifest.get("registry_version"), "run_id": manifest.get("run_id"),
                    "path": prefix, "manifest_path": prefix + MANIFEST, "manifest_sha256": manifest_sha,
                    "activated_at": _now(), "action": action,
                    "previous": history[-2] if len(history) > 1 else None, "history": history,
                    "storage": {"backend": self.backend.kind, "bucket": self.backend.bucket},
                }
                if not unchanged:
                    self._write_json(self.pointer_key(model_name), pointer, cache_control="0")
                if self.table is not None and not row_ok:
                    try:
                        self.table.activate(self._row(model_name, version, manifest, description))
                    except Exception as exc:
                        log.error("model_versions switch failed (%s); restoring the previous production pointer",
                                  str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
                        self._restore_pointer(model_name, old)
                        if isinstance(exc, ConnectionError):
                            raise
                        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                        raise DeployDatabaseError(
                            f"switching the active row of {model_name} to {version} in {self.table.table} failed "
                            f"({first}); production stays {result.previous or 'unset'} (pointer restored). Fix the "
                            "database and re-run the sync") from None
                result.activated = True
                log.info("production of %s -> %s (was %s)%s", model_name, version, result.previous or "none",
                         f"; {self.table.table} row active" if self.table is not None else "")
        finally:
            if lock is not None:
                lock.close()
        result.pointer_path = self.pointer_key(model_name)
        result.table = self.table.table if self.table is not None else None
        keep = {version, *([history[-2]] if self.config.rollback_enabled and len(history) > 1 else []), *protect}
        try:
            result.pruned = self.prune(model_name, keep)
        except (StorageError, ConnectionError, OSError) as exc:
            log.warning("retention skipped for %s: %s (the deployment itself is complete)", model_name, exc)
        result.seconds += time.time() - t0
        return result

    def _restore_pointer(self, model_name: str, old: Mapping[str, Any] | None) -> None:
        key = self.pointer_key(model_name)
        try:
            if old is None:
                self._call(f"delete {key}", lambda: self.backend.delete([key]))
            else:
                self._write_json(key, old, cache_control="0")
        except Exception as exc:  # noqa: BLE001 - report both failures
            log.error("could not restore %s: %s; run `towerops sync --production` once the database is back", key, exc)

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

    def rollback(self, to_version: str | None = None, model_name: str | None = None) -> DeployResult:
        """Re-point production to a kept version (default: the one before) without uploading."""
        model_name = model_name or self.model_name
        if not self.config.rollback_enabled:
            raise ValueError("rollback is disabled (versioning.rollback_enabled: false in the deployment config)")
        self.preflight()
        current = self.pointer(model_name)
        history = list((current or {}).get("history") or [])
        if to_version is None:
            if len(history) < 2:
                raise ValueError(f"{model_name} has no earlier production version to roll back to (history: "
                                 f"{history or 'empty'}); name one with --to")
            target = history[-2]
        else:
            target = version_folder(to_version)
        if current and current.get("version") == target:
            raise ValueError(f"{target} already holds production; nothing to roll back")
        result = self.activate(target, model_name, action="rollback")
        log.warning("rolled back %s production to %s (was %s)", model_name, target, result.previous)
        return result

    # -------------------------------------------------------------- listing and retention
    def versions(self, model_name: str | None = None) -> list[dict[str, Any]]:
        """Version folders in storage with whether they hold a manifest and production."""
        model_name = model_name or self.model_name
        self.preflight()
        pointer = self.pointer(model_name) or {}
        out = []
        for name in self._call(f"list {model_name}/", lambda: self.backend.list_dirs(model_name)):
            try:
                sv = SemVer.parse(name)
            except ValueError:
                continue
            manifest = self.read_json(join_key(model_name, name, MANIFEST))
            out.append({"version": name, "semver": str(sv), "complete": manifest is not None,
                        "active": pointer.get("version") == name,
                        "registry_version": (manifest or {}).get("registry_version"),
                        "total_bytes": (manifest or {}).get("total_bytes"),
                        "created_at": (manifest or {}).get("created_at")})
        return sorted(out, key=lambda r: SemVer.parse(r["version"]))

    def prune(self, model_name: str | None = None, keep: Iterable[str] = ()) -> list[str]:
        """Delete version folders beyond `max_versions` (lowest semver first), never those in
        `keep` nor the pointer's production version and its rollback target."""
        model_name = model_name or self.model_name
        pointer = self.pointer(model_name)
        protected = {version_folder(v) for v in keep} | _protected(pointer, self.config.rollback_enabled)
        folders = []
        for name in self._call(f"list {model_name}/", lambda: self.backend.list_dirs(model_name)):
            try:
                folders.append((SemVer.parse(name), name))
            except ValueError:
                continue  # not ours
        if len(folders) <= self.config.max_versions:
            return []
        folders.sort(reverse=True)
        room = self.config.max_versions - len([n for _, n in folders if n in protected])
        kept_others = [n for _, n in folders if n not in protected][:max(room, 0)]
        doomed = [n for _, n in folders if n not in protected and n not in kept_others]
        for name in doomed:
            prefix = join_key(model_name, name) + "/"
            keys = [o.key for o in self._call(f"list {prefix}", lambda p=prefix: self.backend.list(p))]
            manifest_key = prefix + MANIFEST
            # the manifest goes first: a folder without one is never taken for a complete version
            if manifest_key in keys:
                self._call(f"delete {manifest_key}", lambda k=manifest_key: self.backend.delete([k]))
            rest = [k for k in keys if k != manifest_key]
            if rest:
                self._call(f"delete {prefix}", lambda r=rest: self.backend.delete(r))
            log.info("retention: deleted %s (%d objects; %d version folders kept, max_versions %d)", prefix,
                     len(keys), len(folders) - len(doomed), self.config.max_versions)
        if doomed and self.table is not None:
            self.table.delete_versions(model_name, doomed)
        return doomed

    def close(self) -> None:
        self.backend.close()

"""Upload: what a version folder holds (the bundle's files, the TF.js export), its manifest,
and sending it: each file unless the same size + sha256 is already there, verified after
upload (uploaded once more on a mismatch), the manifest last. Nothing is sent before every
key has passed the storage server's character rule.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ml.logs import get_logger
from registry.deploy.config import MANIFEST, MANIFEST_FORMAT, REQUIRED
from registry.deploy.core import dump_json
from registry.deploy.result import DeployResult, VerificationError, _mb, _now, _read_json_file, version_folder
from registry.deploy.staging import staging_dir, sweep_staging
from registry.deploy.storage.base import (
    CACHE_FILES_S,
    CACHE_MANIFEST_S,
    FileDigest,
    PermanentStorageError,
    StorageError,
    cache_control,
    check_object_keys,
    digest_file,
    guess_content_type,
)
from registry.deploy.verify import VerifySteps
from registry.semver import SemVer

log = get_logger("deployment")


@dataclass
class _Tally:
    """Progress of one upload, shared by the worker threads."""

    result: DeployResult
    total: int
    progress: Any = None
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, digest: FileDigest, uploaded_key: str | None) -> int:
        with self.lock:
            self.done += 1
            if uploaded_key is None:
                self.result.skipped += 1
            else:
                self.result.uploaded.append(uploaded_key)
                self.result.bytes_uploaded += digest.size
            if self.progress:
                self.progress.advance(self.progress.task_ids[0], digest.size)
            return self.done


class UploadSteps(VerifySteps):
    """The upload set, the manifest, and sending them."""

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

    def _prepare(self, model_dir: str | Path, staging: Path, prefix: str, model_name: str, version: str,
                 meta: Mapping[str, Any] | None, extra_dirs: Mapping[str, str | Path] | None
                 ) -> tuple[dict[str, Path], dict[str, FileDigest], dict[str, Any]]:
        """Files, their digests and the manifest (also written to `staging`); every key checked."""
        extra = {**self.prepare_tfjs(model_dir, staging), **(extra_dirs or {})}
        files = self.collect(model_dir, extra)
        check_object_keys({prefix + rel: path for rel, path in files.items()})  # before anything is sent
        digests = self._digests(files)
        meta = dict(meta or {})
        bundle_meta = _read_json_file(Path(model_dir) / "metadata.json")
        meta.setdefault("metrics", bundle_meta.get("final_metrics") or {})
        meta.setdefault("embedding_dim", bundle_meta.get("embedding_dim"))
        meta.setdefault("feature_schema_hash", bundle_meta.get("feature_schema_hash"))
        manifest = self.build_manifest(model_name, version, digests, meta)
        (staging / MANIFEST).write_bytes(dump_json(manifest))  # local first
        return files, digests, manifest

    # -------------------------------------------------------------- leftovers of killed runs
    def sweep_leftovers(self, model_name: str, prefix: str) -> int:
        """Remove what interrupted runs left: unfinished writes (S3 multipart uploads, local
        temporary files) in the version folder about to be uploaded, whatever their age (this
        run owns it now), and elsewhere in the model's folders those older than
        `incomplete_grace_s`; staging folders of dead processes in the temp dir. The count."""
        now = time.time()
        removed = self._call(f"sweep {prefix}", lambda: self.backend.sweep_incomplete(prefix, now))
        model_prefix = model_name.strip("/") + "/"
        removed += self._call(f"sweep {model_prefix}", lambda: self.backend.sweep_incomplete(
            model_prefix, now - self.incomplete_grace_s))
        removed += len(sweep_staging())
        return removed

    # -------------------------------------------------------------- uploading
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
        with self._uploading(prefix), staging_dir("deploy") as staging:
            files, digests, manifest = self._prepare(model_dir, staging, prefix, model_name, version, meta, extra_dirs)
            result.files, result.total_bytes = len(files) + 1, manifest["total_bytes"]
            remote = self.read_json(prefix + MANIFEST)
            same_files = bool(remote) and remote.get("files") == manifest["files"]
            pointer = self.pointer(model_name)
            if pointer and pointer.get("version") == version and not same_files and remote:
                raise ValueError(f"{prefix} holds production with different content; a version in production is "
                                 f"never overwritten: deploy this bundle under a new version (e.g. bump {version})")
            self.sweep_leftovers(model_name, prefix)
            log.info("deploying %s %s (%d files, %s) to %s %s", model_name, version, len(files) + 1,
                     _mb(manifest["total_bytes"]), self.backend.describe(), prefix)
            t_upload = time.perf_counter()
            self._upload_files(prefix, files, digests, result, reupload_ok=True)
            manifest = self._finish_manifest(prefix, manifest, remote if same_files else None, result)
            result.upload_seconds = time.perf_counter() - t_upload
        result.manifest_path = prefix + MANIFEST
        result.seconds = time.time() - t0
        log.info("%s %s: %d file(s) uploaded (%s), %d unchanged, verified in %.1fs (upload %.1fs, %.1f MB/s)",
                 model_name, version, len(result.uploaded), _mb(result.bytes_uploaded), result.skipped,
                 result.seconds, result.upload_seconds, result.mb_per_s)
        return manifest, result

    def _finish_manifest(self, prefix: str, manifest: dict[str, Any], remote: dict[str, Any] | None,
                         result: DeployResult) -> dict[str, Any]:
        """The manifest last: kept when the folder already held these files (idempotent), else
        written after stale files of an earlier attempt are removed."""
        if remote is not None:
            result.skipped += 1
            return remote
        stale = [o.key for o in self._call(f"list {prefix}", lambda: self.backend.list(prefix))
                 if o.key[len(prefix):] not in manifest["files"] and o.key != prefix + MANIFEST]
        if stale:
            log.info("removing %d stale file(s) from %s", len(stale), prefix)
            self._call(f"delete stale in {prefix}", lambda: self.backend.delete(stale))
        self._write_json(prefix + MANIFEST, manifest, cache_control=cache_control(CACHE_MANIFEST_S))
        result.uploaded.append(prefix + MANIFEST)
        return manifest

    def _progress(self, total: int) -> Any:
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

    def _upload_files(self, prefix: str, files: Mapping[str, Path], digests: Mapping[str, FileDigest],
                      result: DeployResult, reupload_ok: bool) -> None:
        """Every file that is not already there, largest first, on the worker pool."""
        tally = _Tally(result, len(files), self._progress(sum(d.size for d in digests.values())))
        try:
            self._parallel([(lambda r=r: self._upload_one(prefix, r, files[r], digests[r], tally, reupload_ok))
                            for r in sorted(files, key=lambda r: -digests[r].size)])
        except PermanentStorageError:
            raise
        except StorageError as exc:
            raise type(exc)(f"{exc} (after {self.retry.attempts} attempts; nothing was activated: re-run the sync "
                            "to resume, files already uploaded are kept)") from None
        finally:
            if tally.progress:
                tally.progress.stop()

    def _upload_one(self, prefix: str, rel: str, path: Path, digest: FileDigest, tally: _Tally,
                    reupload_ok: bool) -> None:
        key = prefix + rel
        st = self._call(f"stat {key}", lambda: self.backend.stat(key))
        # unchanged when size + recorded sha256 match (that pair was verified when uploaded);
        # with verify: full the content is hashed again
        if self._call(f"check {key}", lambda: self._matches(key, digest, st, self.config.verify == "full")):
            tally.count(digest, None)
            log.debug("unchanged %s (%s, sha256 %s…)", key, _mb(digest.size), digest.sha256[:12])
            return
        deep = self._deep(digest.size)
        t = time.perf_counter()

        def send_and_verify() -> None:
            self._call(f"upload {key}", lambda: self.backend.put_file(key, path, digest, guess_content_type(rel),
                                                                       cache_control(CACHE_FILES_S)))
            stored = self._call(f"stat {key}", lambda: self.backend.stat(key))
            if not self._call(f"verify {key}", lambda: self._matches(key, digest, stored, deep)):
                raise VerificationError(f"{key} does not match {path} after upload (stored size "
                                        f"{stored.size if stored else 'missing'}, expected {digest.size}, sha256 "
                                        f"{digest.sha256[:12]}…); check the storage server and re-run the sync")

        # a mismatch is uploaded once more, through the same retry policy as transient errors
        self._call(f"upload and verify {key}", send_and_verify, retry_on=(VerificationError,),
                   attempts=2 if reupload_ok else 1)
        dt = max(time.perf_counter() - t, 1e-6)
        n = tally.count(digest, key)
        log.info("uploaded %d/%d %s (%s, %.1f MB/s)", n, tally.total, key, _mb(digest.size), digest.size / 1e6 / dt)

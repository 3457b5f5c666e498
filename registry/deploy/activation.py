"""Activation: point production at an uploaded, complete version. Under the model's deployment
lock, the pointer `<model>/production.json` moves first, then the `model_versions` row is
switched in one transaction; if that transaction fails the previous pointer is put back.
Retention runs after, outside the lock.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from ml.logs import get_logger
from registry.deploy.config import HISTORY_LIMIT, MANIFEST
from registry.deploy.core import dump_json
from registry.deploy.result import DeployResult, _next_stack, _now, version_folder
from registry.deploy.retention import RetentionSteps
from registry.deploy.storage.base import CACHE_POINTER_S, StorageError, cache_control, digest_bytes
from registry.deploy.table import DeployDatabaseError
from registry.deploy.verify import VerifySteps
from registry.semver import SemVer

log = get_logger("deployment")


class _FileLock:
    def __init__(self, path: Any) -> None:
        import fcntl

        self._handle = open(path, "a+")
        fcntl.flock(self._handle, fcntl.LOCK_EX)

    def close(self) -> None:
        import fcntl

        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _host_lock(model_name: str) -> _FileLock:
    """A lock file in the temp folder: serialises activations of one host (direct `towerops deploy`)."""
    import tempfile
    from pathlib import Path

    return _FileLock(Path(tempfile.gettempdir()) / f"towerops-deploy-{model_name}.lock")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ActivationSteps(RetentionSteps, VerifySteps):
    """Moving production: pointer, table row, then retention."""

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
        lock = self._activation_lock(model_name)
        try:
            if precondition is not None and not precondition():
                result.superseded = True
                log.warning("%s %s uploaded but not activated: production moved to another version meanwhile",
                            model_name, version)
                return result
            history = self._switch(model_name, version, manifest, action, stack, description, result)
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

    def _activation_lock(self, model_name: str) -> Any:
        """The lock held from the "still production?" check to the last write: the `model_versions`
        database's advisory lock, else the one the registry hands over (`activation_lock`, its audit
        database: shared by every promoting host), else a lock file on this host. Without it two
        concurrent promotions could check, then write, in the wrong order and leave the pointer on
        the loser."""
        if self.table is not None:
            return self.table.lock(model_name)
        provider = getattr(self, "activation_lock", None)
        if provider is not None:
            return provider(model_name)
        return _host_lock(model_name)

    def _switch(self, model_name: str, version: str, manifest: Mapping[str, Any], action: str,
                stack: Sequence[str] | None, description: str | None, result: DeployResult) -> list[str]:
        """Under the lock: move the pointer and the table row unless both already name this
        version with this manifest; the new production history."""
        old = self.pointer(model_name)
        result.previous = old.get("version") if old else None
        history = list(stack) if stack is not None else _next_stack(old, version, action)
        history = [version_folder(v) for v in history][-HISTORY_LIMIT:]
        if not history or history[-1] != version:
            history.append(version)
        manifest_sha = digest_bytes(dump_json(manifest)).sha256
        unchanged = (bool(old) and old.get("version") == version and old.get("history") == history
                     and old.get("manifest_sha256") == manifest_sha)
        active_row = self.table.active(model_name) if self.table is not None else None
        row_ok = self.table is None or (active_row is not None and active_row["version"] == version
                                        and active_row["manifest"] == dict(manifest))
        if unchanged and row_ok:
            log.info("%s %s already holds production; pointer and table unchanged", model_name, version)
            result.activated = result.unchanged = True
            return history
        if not unchanged:
            pointer = self._pointer_doc(model_name, version, manifest, manifest_sha, action, history)
            self._write_json(self.pointer_key(model_name), pointer, cache_control=cache_control(CACHE_POINTER_S))
        if not row_ok:
            self._activate_row(model_name, version, manifest, description, old, result)
        result.activated = True
        log.info("production of %s -> %s (was %s)%s", model_name, version, result.previous or "none",
                 f"; {self.table.table} row active" if self.table is not None else "")
        return history

    def _pointer_doc(self, model_name: str, version: str, manifest: Mapping[str, Any], manifest_sha: str,
                     action: str, history: list[str]) -> dict[str, Any]:
        prefix = self.prefix(version, model_name)
        return {
            "model": model_name, "version": version, "semver": str(SemVer.parse(version)),
            "registry_version": manifest.get("registry_version"), "run_id": manifest.get("run_id"),
            "path": prefix, "manifest_path": prefix + MANIFEST, "manifest_sha256": manifest_sha,
            "activated_at": _now(), "action": action,
            "previous": history[-2] if len(history) > 1 else None, "history": history,
            "storage": {"backend": self.backend.kind, "bucket": self.backend.bucket},
        }

    def _activate_row(self, model_name: str, version: str, manifest: Mapping[str, Any], description: str | None,
                      old: Mapping[str, Any] | None, result: DeployResult) -> None:
        """Switch the table's active row; on failure put the previous pointer back."""
        if self.table is None:
            return
        try:
            self.table.activate(self._row(model_name, version, manifest, description))
        except Exception as exc:
            log.error("model_versions switch failed (%s); restoring the previous production pointer", _first_line(exc))
            self._restore_pointer(model_name, old)
            if isinstance(exc, ConnectionError):
                raise
            raise DeployDatabaseError(
                f"switching the active row of {model_name} to {version} in {self.table.table} failed "
                f"({_first_line(exc)}); production stays {result.previous or 'unset'} (pointer restored). Fix the "
                "database and re-run the sync") from None

    def _restore_pointer(self, model_name: str, old: Mapping[str, Any] | None) -> None:
        key = self.pointer_key(model_name)
        try:
            if old is None:
                self._call(f"delete {key}", lambda: self.backend.delete([key]))
            else:
                self._write_json(key, old, cache_control=cache_control(CACHE_POINTER_S))
        except Exception as exc:  # noqa: BLE001 - report both failures
            log.error("could not restore %s: %s; run `towerops sync --production` once the database is back", key, exc)

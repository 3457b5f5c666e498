"""Retention: which version folders stay. At most `max_versions` complete folders (those with a
manifest, which is written only after every file verified) are kept, the lowest semver going
first, never production nor its rollback target; an incomplete folder (a failed or killed
upload) is not counted and is removed once no one is writing it: not a version this process is
uploading, and nothing written to it within `incomplete_grace_s` (another process's upload).
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from ml.logs import get_logger
from registry.deploy.config import MANIFEST
from registry.deploy.core import DeployerCore
from registry.deploy.result import _protected, version_folder
from registry.semver import SemVer

log = get_logger("deployment")


class RetentionSteps(DeployerCore):
    """Listing version folders and pruning them."""

    def versions(self, model_name: str | None = None) -> list[dict[str, Any]]:
        """Version folders in storage with whether they hold a manifest and production."""
        model_name = model_name or self.model_name
        self.preflight()
        pointer = self.pointer(model_name) or {}
        out = []
        for name in self._semver_dirs(model_name):
            manifest = self.read_json(self.prefix(name, model_name) + MANIFEST)
            out.append({"version": name, "semver": str(SemVer.parse(name)), "complete": manifest is not None,
                        "active": pointer.get("version") == name,
                        "registry_version": (manifest or {}).get("registry_version"),
                        "total_bytes": (manifest or {}).get("total_bytes"),
                        "created_at": (manifest or {}).get("created_at")})
        return sorted(out, key=lambda r: SemVer.parse(r["version"]))

    def _semver_dirs(self, model_name: str) -> list[str]:
        """The model's sub-folders named like versions (anything else is not ours)."""
        names = []
        for name in self._call(f"list {model_name}/", lambda: self.backend.list_dirs(model_name)):
            try:
                SemVer.parse(name)
            except ValueError:
                continue
            names.append(name)
        return names

    def prune(self, model_name: str | None = None, keep: Iterable[str] = ()) -> list[str]:
        """Delete complete version folders beyond `max_versions` (lowest semver first) and
        abandoned incomplete ones; never those in `keep` nor the pointer's production version
        and its rollback target. The deleted folder names."""
        model_name = model_name or self.model_name
        pointer = self.pointer(model_name)
        protected = {version_folder(v) for v in keep} | _protected(pointer, self.config.rollback_enabled)
        complete, incomplete = [], []
        for name in self._semver_dirs(model_name):
            manifest_key = self.prefix(name, model_name) + MANIFEST
            has_manifest = self._call(f"stat {manifest_key}", lambda k=manifest_key: self.backend.stat(k)) is not None
            (complete if has_manifest else incomplete).append(name)
        beyond = self._beyond_limit(complete, protected)
        leftovers = [n for n in sorted(incomplete, key=SemVer.parse, reverse=True)
                     if n not in protected and self._abandoned(model_name, n)]
        for name in beyond:
            n = self._delete_folder(model_name, name)
            log.info("retention: deleted %s (%d objects; %d complete version folders kept, max_versions %d)",
                     self.prefix(name, model_name), n, len(complete) - len(beyond), self.config.max_versions)
        for name in leftovers:
            n = self._delete_folder(model_name, name)
            log.info("retention: removed incomplete %s (%d objects, no manifest: a failed or killed upload)",
                     self.prefix(name, model_name), n)
        doomed = beyond + leftovers
        if doomed and self.table is not None:
            self.table.delete_versions(model_name, doomed)
        return doomed

    def _beyond_limit(self, complete: list[str], protected: set[str]) -> list[str]:
        """Complete folders over `max_versions`: protected ones count and stay, the rest are
        kept highest semver first."""
        if len(complete) <= self.config.max_versions:
            return []
        ordered = sorted(complete, key=SemVer.parse, reverse=True)
        room = self.config.max_versions - len([n for n in ordered if n in protected])
        others = [n for n in ordered if n not in protected]
        return others[max(room, 0):]

    def _abandoned(self, model_name: str, name: str) -> bool:
        """Whether no one is writing an incomplete folder: not this process's upload, and its
        newest object older than `incomplete_grace_s` (objects listed without times count as
        old). A folder with no objects (only a writer's temporary file) has nothing to remove."""
        prefix = self.prefix(name, model_name)
        if self._is_uploading(prefix):
            return False
        objects = self._call(f"list {prefix}", lambda: self.backend.list(prefix))
        if not objects:
            return False
        times = [o.modified for o in objects if o.modified is not None]
        return not times or time.time() - max(times) >= self.incomplete_grace_s

    def _delete_folder(self, model_name: str, name: str) -> int:
        """Delete a version folder, its manifest first (a folder without one is never taken
        for a complete version); the number of objects deleted."""
        prefix = self.prefix(name, model_name)
        keys = [o.key for o in self._call(f"list {prefix}", lambda: self.backend.list(prefix))]
        manifest_key = prefix + MANIFEST
        if manifest_key in keys:
            self._call(f"delete {manifest_key}", lambda: self.backend.delete([manifest_key]))
        rest = [k for k in keys if k != manifest_key]
        if rest:
            self._call(f"delete {prefix}", lambda: self.backend.delete(rest))
        return len(keys)

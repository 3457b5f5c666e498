"""Verification: whether a stored object is a given file (size, recorded sha256, and for small
files or `verify: full` the sha256 of its downloaded content), and whether a version folder is
complete (every file of its manifest present and matching)."""

from __future__ import annotations

from typing import Any, Mapping

from ml.logs import get_logger
from registry.deploy.config import MANIFEST
from registry.deploy.core import DeployerCore
from registry.deploy.storage.base import FileDigest, ObjectStat

log = get_logger("deployment")


class VerifySteps(DeployerCore):
    """Checks of uploaded objects and version folders."""

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

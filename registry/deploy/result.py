"""What a deployment reports, and the small helpers the deployer shares."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from registry.deploy.storage.base import StorageError
from registry.semver import SemVer


def version_folder(version: str) -> str:
    """'1.2.0' or 'v1.2.0' -> 'v1.2.0' (a clear error for anything else)."""
    try:
        return SemVer.parse(version).tag
    except ValueError:
        raise ValueError(f"version {version!r} is not a semantic version: pass vMAJOR.MINOR.PATCH, e.g. v1.2.0") from None


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _mb(n: int | float) -> str:
    return f"{n / 1e6:.1f} MB"


# ------------------------------------------------------------------------ results
@dataclass
class DeployResult:
    """What a deployment did; `describe()` for people, `to_dict()` for tags and JSON."""

    model: str
    version: str
    backend: str
    prefix: str
    registry_version: str | None = None
    uploaded: list[str] = field(default_factory=list)
    skipped: int = 0
    bytes_uploaded: int = 0
    total_bytes: int = 0
    files: int = 0
    seconds: float = 0.0          # the whole deployment: TF.js export, hashing, upload, activation
    upload_seconds: float = 0.0   # sending and verifying the files and the manifest only
    activated: bool = False
    repointed_only: bool = False
    previous: str | None = None
    superseded: bool = False
    unchanged: bool = False
    pruned: list[str] = field(default_factory=list)
    manifest_path: str = ""
    pointer_path: str = ""
    table: str | None = None

    @property
    def mb_per_s(self) -> float:
        """Upload throughput: bytes sent over the time spent uploading (not the TF.js export,
        the hashing or the activation)."""
        return self.bytes_uploaded / 1e6 / self.upload_seconds if self.upload_seconds > 0 else 0.0

    def describe(self) -> str:
        if self.unchanged:
            state = "already production; pointer unchanged"
        elif self.superseded:
            state = "uploaded; not activated (production moved on meanwhile)"
        elif self.repointed_only:
            state = f"re-pointed production to it without uploading (was {self.previous or 'none'})"
        elif self.activated:
            state = f"now production (was {self.previous or 'none'})"
        else:
            state = "uploaded and verified; not activated"
        pruned = f"; pruned {', '.join(self.pruned)}" if self.pruned else ""
        return (f"{self.model} {self.version} -> {self.backend} {self.prefix}: {len(self.uploaded)} uploaded "
                f"({_mb(self.bytes_uploaded)}), {self.skipped} unchanged, {self.files} files ({_mb(self.total_bytes)}) "
                f"in {self.seconds:.1f}s; {state}{pruned}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mb_per_s"] = round(self.mb_per_s, 3)
        return d


class VerificationError(StorageError):
    """An uploaded object does not match the local file (after one re-upload)."""


def _protected(pointer: Mapping[str, Any] | None, rollback_enabled: bool) -> set[str]:
    if not pointer:
        return set()
    history = list(pointer.get("history") or [])
    out = {str(pointer.get("version"))} if pointer.get("version") else set()
    if rollback_enabled and len(history) > 1:
        out.add(str(history[-2]))
    return out


def _next_stack(old: Mapping[str, Any] | None, version: str, action: str) -> list[str]:
    """The production stack after this activation, as the registry's audit keeps it:
    promote pushes; rollback pops the current holder, then pushes the target if new."""
    stack = list((old or {}).get("history") or [])
    if action == "rollback":
        if stack:
            stack.pop()
    if not stack or stack[-1] != version:
        stack.append(version)
    return stack


def _read_json_file(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}

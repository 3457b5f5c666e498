"""Semantic versions of registered models.

major: the embedding space changed (embedding dimension or feature schema): item embeddings
       of the old version can't be mixed with user embeddings of the new one.
minor: a retrain (new run, new data or weights) in the same embedding space.
patch: metadata only (the same run's model registered again).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

_SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)$")


@dataclass(frozen=True, order=True)
class SemVer:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> "SemVer":
        m = _SEMVER.match(str(text).strip())
        if not m:
            raise ValueError(f"{text!r} is not a semantic version: use MAJOR.MINOR.PATCH, e.g. 1.2.0 or v1.2.0")
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def tag(self) -> str:
        return f"v{self}"


def next_semver(previous: SemVer | None, previous_meta: Mapping[str, str] | None,
                current_meta: Mapping[str, str], known_run_ids: frozenset[str] | set[str] = frozenset()
                ) -> tuple[SemVer, str, str]:
    """(new version, bump kind, reason) for a model described by `current_meta`
    (keys embedding_dim, feature_schema_hash, run_id) after `previous`, the highest version;
    `known_run_ids` are the runs already registered (the same run again is metadata-only)."""
    if previous is None or previous_meta is None:
        return SemVer(1, 0, 0), "initial", "first registered version"
    for key in ("embedding_dim", "feature_schema_hash"):
        if str(previous_meta.get(key)) != str(current_meta.get(key)):
            return (SemVer(previous.major + 1, 0, 0), "major",
                    f"{key} changed from {previous_meta.get(key)} to {current_meta.get(key)}: embeddings incompatible")
    run_id = current_meta.get("run_id")
    if run_id and (run_id == previous_meta.get("run_id") or run_id in known_run_ids):
        return SemVer(previous.major, previous.minor, previous.patch + 1), "patch", "same training run, metadata only"
    return SemVer(previous.major, previous.minor + 1, 0), "minor", "retrained in the same embedding space"

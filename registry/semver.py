"""Semantic versions of registered models: what the number promises an app.

major: a new embedding space. Any retrain of the towers (their weights' fingerprint changed),
       a changed embedding dimension, or a changed feature schema (including vocabulary sizes).
       Item embeddings stored under another major can't be mixed with this user tower.
minor: the same towers with a refreshed catalog (new or changed items embedded by the same
       item tower, `towerops catalog refresh`): stored item embeddings stay valid.
patch: metadata only (the same run registered again, or the same towers and catalog).

So an app can rely on: same major => its stored item embeddings and the current user tower
are compatible. The candidate is compared with the current production version (or, without
one, the highest version); a candidate whose towers match another registered version is
placed in that version's major line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

_SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)$")
# what decides the embedding space, in the order their change is reported
SPACE_KEYS = ("embedding_dim", "feature_schema_hash", "towers_fingerprint")


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


def _short(value: object) -> str:
    text = str(value)
    return text[:12] if len(text) > 16 else text


def same_space(a: Mapping[str, object], b: Mapping[str, object]) -> bool:
    """True when both describe the same embedding space (every SPACE_KEYS value known and equal)."""
    return all(a.get(k) not in (None, "", "None") and str(a.get(k)) == str(b.get(k)) for k in SPACE_KEYS)


def next_semver(previous: SemVer | None, previous_meta: Mapping[str, str] | None,
                current_meta: Mapping[str, str], known_run_ids: frozenset[str] | set[str] = frozenset(),
                taken: Iterable[SemVer] = ()) -> tuple[SemVer, str, str]:
    """(new version, bump kind, reason) for a model described by `current_meta` (keys embedding_dim,
    feature_schema_hash, towers_fingerprint, catalog_hash, run_id) against `previous` (production,
    or the version whose towers it shares); `known_run_ids` are the runs already registered (the
    same run again is metadata only); `taken` every version number in use, so a new number never
    collides (a minor of major 1 after 2.0.0 exists is 1.<highest minor of 1 + 1>.0)."""
    taken = set(taken) | ({previous} if previous is not None else set())
    if previous is None or previous_meta is None:
        major = max((v.major for v in taken), default=0) + 1
        return SemVer(major, 0, 0), "initial", "first registered version"
    new_major = SemVer(max(v.major for v in taken) + 1, 0, 0)
    for key in ("embedding_dim", "feature_schema_hash"):
        if str(previous_meta.get(key)) != str(current_meta.get(key)):
            return (new_major, "major", f"{key} changed from {_short(previous_meta.get(key))} to "
                    f"{_short(current_meta.get(key))}: a new embedding space, stored item embeddings incompatible")
    run_id = current_meta.get("run_id")
    same_run = bool(run_id) and (run_id == previous_meta.get("run_id") or run_id in known_run_ids)
    patch = SemVer(previous.major, previous.minor,
                   max(v.patch for v in taken if (v.major, v.minor) == (previous.major, previous.minor)) + 1)
    before, now = previous_meta.get("towers_fingerprint"), current_meta.get("towers_fingerprint")
    if same_run and (not before or not now or str(before) == str(now)):
        return patch, "patch", "same training run, metadata only"
    if not before or not now or str(before) != str(now):
        why = (f"towers retrained (weights fingerprint {_short(before)} -> {_short(now)})" if before and now
               else "a new training run (no towers fingerprint to prove the same weights)")
        return new_major, "major", f"{why}: a new embedding space, stored item embeddings incompatible"
    if str(previous_meta.get("catalog_hash") or "") != str(current_meta.get("catalog_hash") or ""):
        minor = max(v.minor for v in taken if v.major == previous.major) + 1
        return (SemVer(previous.major, minor, 0), "minor",
                "same towers, refreshed catalog: stored item embeddings stay compatible")
    return patch, "patch", "same towers and catalog, metadata only"

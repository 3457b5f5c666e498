"""Assignment of users to A/B arms: sha256 of `salt:user_id` cut by the arms' weights.

The one implementation that `towerops ab assign` (ml.evaluation.abtest, which re-exports
these) and the A/B scoring server (ml.inference.serving) share, so the arm a user is served
is the arm the analysis attributes their swipes to. It lives in the inference layer because
serving may not import evaluation; it needs no state: same (salt, user, arms) -> same arm in
every process, on every machine, after every restart.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Mapping

import numpy as np

DEFAULT_ARMS: dict[str, float] = {"control": 0.5, "treatment": 0.5}


def parse_arms(spec: str | Mapping[str, float] | None) -> dict[str, float]:
    """Arms and weights from "control=50,treatment=50" (or a mapping), normalised to sum to 1."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return dict(DEFAULT_ARMS)
    if isinstance(spec, str):
        arms: dict[str, float] = {}
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise ValueError(f"arm {part!r} has no weight: write arms as name=weight, e.g. control=50,treatment=50")
            name, _, weight = part.partition("=")
            name = name.strip()
            try:
                value = float(weight)
            except ValueError:
                raise ValueError(f"arm {name!r} has weight {weight.strip()!r}, not a number: e.g. control=50") from None
            if name in arms:
                raise ValueError(f"arm {name!r} is listed twice in {spec!r}")
            arms[name] = value
    else:
        arms = {str(k): float(v) for k, v in spec.items()}
    bad = {k: v for k, v in arms.items() if not (v > 0 and math.isfinite(v)) or not k}
    if bad or len(arms) < 2:
        raise ValueError(f"need at least two named arms with positive weights, got {arms}: e.g. control=50,treatment=50")
    total = sum(arms.values())
    return {k: v / total for k, v in arms.items()}


def hash_unit(user_id: Any, salt: str = "") -> float:
    """SHA-256 of `salt:user_id` as a number in [0, 1) (first 8 bytes / 2**64)."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_arm(user_id: Any, arms: str | Mapping[str, float] | None = None, salt: str = "") -> str:
    """The arm of one user: deterministic for (salt, user_id, arms)."""
    weights = parse_arms(arms)
    u = hash_unit(user_id, salt)
    names = list(weights)
    cuts = np.cumsum([weights[n] for n in names])
    return names[min(int(np.searchsorted(cuts, u, side="right")), len(names) - 1)]


__all__ = ["DEFAULT_ARMS", "assign_arm", "hash_unit", "parse_arms"]

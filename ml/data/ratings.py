"""Ratings as people have them: 0-1 scores, 1-5 or 1-10 stars (half stars too), or any [low, high].

A `rating` column becomes like/nope labels by a threshold on its scale. The scale is inferred
from the values (`data.rating_scale: auto`) or configured; the threshold defaults to 4 of 5 stars
(0.8 x the top of a star scale: 8 of 10, 80 of 100) and to 0.5 on a 0-1 scale. A decision
column (like/nope) wins over a rating where both are given.

Inference, on the non-empty ratings: all in [0, 1] -> 0-1; else all in whole or half steps
within [0.5, 5] -> 1-5 stars; within [0.5, 10] -> 1-10 stars; anything else needs
`data.rating_scale` (the error says which values did not fit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from ml.data.schema import Dataset

NAMED_SCALES: dict[str, tuple[float, float]] = {"0-1": (0.0, 1.0), "1-5": (1.0, 5.0), "1-10": (1.0, 10.0)}


@dataclass(frozen=True)
class RatingScale:
    """A rating scale, its like threshold and whether it was inferred from the data."""

    low: float
    high: float
    like_threshold: float
    name: str = ""
    inferred: bool = False

    @property
    def accepts(self) -> tuple[float, float]:
        """The values the scale admits: star scales take half stars down to 0.5."""
        if self.name in ("1-5", "1-10"):
            return 0.5, self.high
        return self.low, self.high

    def describe(self) -> str:
        label = f"{self.name} stars" if self.name in ("1-5", "1-10") else (self.name or f"[{self.low:g}, {self.high:g}]")
        how = "inferred from the ratings" if self.inferred else "as configured"
        return f"rating scale {label} ({how}); a like is rating >= {self.like_threshold:g}"


def default_threshold(low: float, high: float) -> float:
    """0.5 on a 0-1 scale, else 0.8 x the top (4 of 5 stars, 8 of 10)."""
    return 0.5 if (low, high) == (0.0, 1.0) else 0.8 * high


def parse_rating_scale(spec: Any, like_threshold: float | None = None) -> RatingScale | None:
    """`auto`/None -> None (infer from the data); "1-5", "0-1", "1-10" or [low, high] -> a scale.

    Raises ValueError naming the value and the accepted forms.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "auto")):
        return None
    name = ""
    if isinstance(spec, str):
        key = spec.strip().lower().replace(" ", "").replace("..", "-").replace("stars", "")
        if key not in NAMED_SCALES:
            raise ValueError(f"data.rating_scale={spec!r} is unknown: use auto, 0-1, 1-5, 1-10 or [low, high]")
        name, (low, high) = key, NAMED_SCALES[key]
    elif isinstance(spec, Sequence) and len(spec) == 2:
        try:
            low, high = float(spec[0]), float(spec[1])
        except (TypeError, ValueError):
            raise ValueError(f"data.rating_scale={spec!r} must be two numbers [low, high], e.g. [0, 100]") from None
        name = next((n for n, lh in NAMED_SCALES.items() if lh == (low, high)), "")
    else:
        raise ValueError(f"data.rating_scale={spec!r} must be auto, 0-1, 1-5, 1-10 or [low, high]")
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"data.rating_scale={spec!r}: low must be below high, e.g. [1, 5]")
    scale = RatingScale(low, high, default_threshold(low, high), name)
    return with_threshold(scale, like_threshold)


def with_threshold(scale: RatingScale, like_threshold: float | None) -> RatingScale:
    """The scale with a configured like threshold (checked to lie on it)."""
    if like_threshold is None:
        return scale
    t = float(like_threshold)
    lo, hi = scale.accepts
    if not (math.isfinite(t) and lo < t <= hi):
        raise ValueError(f"data.like_threshold={like_threshold} is not on the {scale.describe().split(';')[0]}: "
                         f"pick a value in ({lo:g}, {hi:g}], e.g. {default_threshold(scale.low, scale.high):g}")
    return replace(scale, like_threshold=t)


def infer_rating_scale(values: np.ndarray) -> RatingScale | None:
    """The scale the ratings fit (see the module doc); None when they fit none."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0 or (v.min() >= 0.0 and v.max() <= 1.0):
        return RatingScale(0.0, 1.0, 0.5, "0-1", inferred=True)
    if np.all(np.mod(v * 2.0, 1.0) == 0) and v.min() >= 0.5:
        for name in ("1-5", "1-10"):
            low, high = NAMED_SCALES[name]
            if v.max() <= high:
                return RatingScale(low, high, default_threshold(low, high), name, inferred=True)
    return None


def closest_scale(values: np.ndarray) -> RatingScale:
    """For ratings that fit no scale: the named one holding most of them (to report the rest as outside)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    scales = [RatingScale(lo, hi, default_threshold(lo, hi), n, inferred=True) for n, (lo, hi) in NAMED_SCALES.items()]
    return max(scales, key=lambda s: (int(((v >= s.accepts[0]) & (v <= s.accepts[1])).sum()), -s.high))


def apply_rating_config(dataset: "Dataset", rating_scale: Any = "auto", like_threshold: float | None = None) -> "Dataset":
    """The dataset with labels from its ratings under a configured scale/threshold (`data.*` of a config).

    Decisions keep winning; only rows whose label came from a rating are relabelled. A no-op
    for data without ratings or when the configuration is what validation already used.
    """
    from ml.data.schema import Dataset

    info = dataset.ratings
    if info is None or (parse_rating_scale(rating_scale) is None and like_threshold is None):
        return dataset
    configured = parse_rating_scale(rating_scale, like_threshold)
    if configured is None:
        configured = with_threshold(info.scale, like_threshold)
    if configured == info.scale:
        return dataset
    inter = dataset.interactions
    rating = inter["rating"].to_numpy(np.float64)
    from_rating = info.from_rating
    if len(from_rating) != len(inter):  # rows filtered after validation: provenance lost
        if "decision" in inter.columns:
            raise ValueError(f"{dataset.sources.get('interactions', 'interactions')}: the interactions changed after "
                             "validation, so which labels came from ratings (not decisions) is unknown; validate the "
                             "filtered tables again (ml.data.validation.validate_dataset) with data.rating_scale")
        from_rating = np.ones(len(inter), dtype=bool)
    lo, hi = configured.accepts
    rated = from_rating & np.isfinite(rating)
    outside = rated & ((rating < lo) | (rating > hi))
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise ValueError(f"{dataset.sources.get('interactions', 'interactions')}: {int(outside.sum())} ratings are outside "
                         f"the configured {configured.describe()} (e.g. {rating[first]:g} at row {first + 1}); set "
                         "data.rating_scale to the scale the ratings use (auto infers it)")
    label = inter["label"].to_numpy().copy()
    label[rated] = (rating[rated] >= configured.like_threshold).astype(label.dtype)
    out = inter.copy()
    out["label"] = label
    if "decision" in out.columns:
        out["decision"] = np.where(label == 1, "like", "nope").astype(object)
    return Dataset(dataset.users, dataset.items, out, dict(dataset.sources),
                   ratings=RatingInfo(configured, from_rating.copy()))


@dataclass
class RatingInfo:
    """How a dataset's labels came from ratings: the scale used and which rows it labelled."""

    scale: RatingScale
    from_rating: np.ndarray  # bool per interaction row: the label came from the rating (no decision)


__all__ = ["NAMED_SCALES", "RatingInfo", "RatingScale", "apply_rating_config", "closest_scale", "default_threshold",
           "infer_rating_scale", "parse_rating_scale", "with_threshold"]

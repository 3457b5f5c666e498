"""A/B testing: deterministic assignment of users to arms, and analysis of logged outcomes.

Assignment hashes `salt:user_id` with SHA-256 to a number in [0, 1) and cuts that
interval by the arms' weights, so a user's arm is the same in every process, on
every machine and after every restart, with no assignment table to store. A new
salt per experiment reshuffles users independently of earlier experiments.

Analysis reads outcomes (one row per swipe: user, arm, item, like/nope) and reports
the like rate per arm and, for each treatment against the control, the difference
with a confidence interval, the relative lift, a two-sided p-value and whether the
sample is large enough to decide. Two units of analysis:
- `swipe` (default): two-proportion z-test over swipes, as if swipes were independent;
- `user`: the like rate as a ratio of per-user sums with a delta-method variance,
  which accounts for one user's swipes being correlated (wider, more honest intervals
  when users swipe a lot).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from ml.inference.ab_assignment import assign_arm, hash_unit, parse_arms  # one hash, shared with serving
from ml.logs import get_logger

log = get_logger("monitoring")

LIKE_WORDS = frozenset({"like", "liked", "yes", "right", "1", "true"})
NOPE_WORDS = frozenset({"nope", "dislike", "no", "left", "0", "false"})


# ---------------------------------------------------------------- assignment
def assign_users(user_ids: Iterable[Any], arms: str | Mapping[str, float] | None = None, salt: str = "") -> pd.DataFrame:
    """`user_id, arm, bucket` for many users (bucket = the hash in [0, 1))."""
    weights = parse_arms(arms)
    ids = [str(u) for u in user_ids]
    units = np.fromiter((hash_unit(u, salt) for u in ids), dtype=np.float64, count=len(ids))
    names = np.array(list(weights), dtype=object)
    cuts = np.cumsum(list(weights.values()))
    idx = np.minimum(np.searchsorted(cuts, units, side="right"), len(names) - 1)
    return pd.DataFrame({"user_id": ids, "arm": names[idx] if len(ids) else np.array([], dtype=object),
                         "bucket": units})


# ---------------------------------------------------------------- outcomes
def read_outcomes(path: str | Path) -> pd.DataFrame:
    """Read outcomes from CSV/Parquet/JSON lines and normalise them (see `normalise_outcomes`)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"outcomes file {p} does not exist: pass a CSV/Parquet file with columns "
                                "user_id, arm, item_id and decision (like/nope) or label (1/0)")
    suffix = "".join(p.suffixes[-2:]).lower()
    try:
        if suffix.endswith(".parquet"):
            frame = pd.read_parquet(p)
        elif suffix.endswith((".jsonl", ".ndjson")):
            frame = pd.read_json(p, lines=True, dtype=False)
        else:
            frame = pd.read_csv(p, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 - a parser error becomes a readable message
        raise ValueError(f"{p}: could not read the outcomes ({type(exc).__name__}: {exc}); "
                         "expected CSV with a header row, Parquet or JSON lines") from exc
    return normalise_outcomes(frame, source=str(p))


def normalise_outcomes(frame: pd.DataFrame, source: str = "outcomes") -> pd.DataFrame:
    """Columns user_id, arm, item_id (optional), liked (0/1); raise ValueError naming the bad column/row/value."""
    cols = {c.lower().strip(): c for c in frame.columns}
    missing = [c for c in ("user_id", "arm") if c not in cols]
    label_col = next((cols[c] for c in ("decision", "label", "liked", "outcome") if c in cols), None)
    if missing or label_col is None:
        need = missing + ([] if label_col is not None else ["decision (like/nope) or label (1/0)"])
        raise ValueError(f"{source}: missing column(s) {', '.join(need)}; found {list(frame.columns)}. "
                         "Outcomes need one row per swipe: user_id, arm, item_id, decision")
    out = pd.DataFrame({"user_id": frame[cols["user_id"]].astype(str).str.strip(),
                        "arm": frame[cols["arm"]].astype(str).str.strip()})
    if "item_id" in cols:
        out["item_id"] = frame[cols["item_id"]].astype(str)
    text = frame[label_col].astype(str).str.strip().str.lower()
    text = text.str.replace(r"^(\d+)\.0+$", r"\1", regex=True)
    liked = text.isin(LIKE_WORDS)
    noped = text.isin(NOPE_WORDS)
    bad = ~(liked | noped)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        values = ", ".join(repr(v) for v in frame[label_col][bad].astype(str).unique()[:5])
        raise ValueError(f"{source}: column {label_col!r} has {int(bad.sum())} value(s) that are neither like nor nope "
                         f"(first at data row {row + 1}: {values}); use like/nope or 1/0")
    for col in ("user_id", "arm"):
        empty = (out[col] == "") | out[col].str.lower().isin({"nan", "none", "null"})
        if empty.any():
            row = int(np.flatnonzero(empty.to_numpy())[0])
            raise ValueError(f"{source}: column {col!r} is empty in {int(empty.sum())} row(s) (first at data row "
                             f"{row + 1}); every outcome needs a {col}")
    out["liked"] = liked.to_numpy().astype(np.int64)
    arms_per_user = out.groupby("user_id")["arm"].nunique()
    crossed = arms_per_user[arms_per_user > 1]
    if len(crossed):
        shown = ", ".join(repr(u) for u in crossed.index[:5])
        raise ValueError(f"{source}: {len(crossed)} user(s) appear in more than one arm (e.g. {shown}); the assignment "
                         "is broken (salt or weights changed mid-experiment?), so arms are not comparable. "
                         "Drop those users or restart the experiment with a new salt")
    return out


# ---------------------------------------------------------------- outcomes from the prediction log
@dataclass
class LoggedArms:
    """Who was served which arm, as the serving prediction log recorded it."""

    arms: pd.DataFrame                      # user_id, arm, first_ts (one row per user)
    versions: dict[str, list[str]]          # arm -> model versions that answered for it
    lines: int                              # served A/B lines read (shadow and error lines excluded)


def read_logged_arms(path: str | Path) -> LoggedArms:
    """Users' arms from the prediction log written by `towerops serve --challenger-uri ...`.

    Reads a file or every *.jsonl in a folder (rotated files too); uses answered lines with
    an arm and a user_id, skipping shadow lines (never shown) and errors. A user logged in
    two arms means the assignment changed mid-experiment: an error naming the user."""
    import json

    p = Path(path)
    files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    if not p.exists() or not files:
        raise FileNotFoundError(f"prediction log {p} does not exist or holds no *.jsonl files: pass the file "
                                "`towerops serve --prediction-log` wrote (or its folder)")
    users: dict[str, tuple[str, str]] = {}
    versions: dict[str, set[str]] = {}
    lines = 0
    for file in files:
        text = file.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(text, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if n == len(text):  # a torn last line of a live file
                    continue
                raise ValueError(f"{file}:{n}: not valid JSON; each line of a prediction log is one JSON object") from None
            arm, user = rec.get("arm"), rec.get("user_id")
            if not arm or user is None or rec.get("shadow") is True or rec.get("status", "ok") != "ok":
                continue
            lines += 1
            user, ts = str(user), str(rec.get("ts") or "")
            versions.setdefault(str(arm), set()).add(str(rec.get("model_version")))
            seen = users.get(user)
            if seen is not None and seen[0] != arm:
                raise ValueError(f"{file}:{n}: user {user!r} was served arm {arm!r} here and {seen[0]!r} elsewhere "
                                 "in the log: the salt or the split changed mid-experiment, so arms are not "
                                 "comparable; analyse each period separately")
            if seen is None or ts < seen[1]:
                users[user] = (str(arm), ts)
    if not users:
        raise ValueError(f"prediction log {p} holds no answered A/B lines (lines with an arm and a user_id): serve "
                         "two versions with `towerops serve --challenger-uri ...` (shadow lines are never counted)")
    frame = pd.DataFrame([(u, a, t) for u, (a, t) in users.items()], columns=["user_id", "arm", "first_ts"])
    return LoggedArms(frame, {a: sorted(v) for a, v in versions.items()}, lines)


def outcomes_from_log(log_path: str | Path, swipes_path: str | Path) -> tuple[pd.DataFrame, LoggedArms, list[str]]:
    """(outcomes with the logged arm, the logged arms, notes): each swipe of a user the log served,
    attributed to that user's arm; swipes before the user's first logged answer are dropped
    when the swipes have a timestamp (ts or timestamp column)."""
    logged = read_logged_arms(log_path)
    p = Path(swipes_path)
    if not p.is_file():
        raise FileNotFoundError(f"outcomes file {p} does not exist: pass the swipes (CSV/Parquet/JSON lines with "
                                "user_id, item_id and decision like/nope or label 1/0)")
    suffix = p.suffix.lower()
    raw = (pd.read_parquet(p) if suffix == ".parquet" else
           pd.read_json(p, lines=True, dtype=False) if suffix in (".jsonl", ".ndjson") else
           pd.read_csv(p, dtype=str, keep_default_na=False))
    cols = {c.lower().strip(): c for c in raw.columns}
    if "user_id" not in cols:
        raise ValueError(f"{p}: no user_id column (found {list(raw.columns)}); swipes need user_id, item_id, decision")
    if "arm" in cols:  # the log decides the arm
        raw = raw.drop(columns=[cols["arm"]])
    raw = raw.assign(user_id=raw[cols["user_id"]].astype(str).str.strip())
    if cols["user_id"] != "user_id":
        raw = raw.drop(columns=[cols["user_id"]])
    joined = raw.merge(logged.arms, on="user_id", how="inner")
    notes: list[str] = []
    dropped = len(raw) - len(joined)
    if dropped:
        notes.append(f"{dropped} of {len(raw)} swipe(s) are from users the log never served an A/B answer; "
                     "they are left out")
    ts_col = next((cols[c] for c in ("ts", "timestamp") if c in cols), None)
    if ts_col is not None and len(joined):
        swiped = pd.to_datetime(joined[ts_col], errors="coerce", utc=True, format="mixed")
        first = pd.to_datetime(joined["first_ts"], errors="coerce", utc=True, format="ISO8601")
        early = (swiped < first).fillna(False).to_numpy()
        if early.any():
            notes.append(f"{int(early.sum())} swipe(s) happened before the user's first logged answer; left out")
            joined = joined[~early]
    if joined.empty:
        raise ValueError(f"no swipe in {p} belongs to a user served by the A/B log {log_path}: check that both "
                         "cover the same period and the same user ids")
    return normalise_outcomes(joined.drop(columns=["first_ts"]), source=str(p)), logged, notes


# ---------------------------------------------------------------- analysis
@dataclass
class ArmStats:
    arm: str
    users: int
    swipes: int
    likes: int
    like_rate: float
    expected_share: float | None = None


@dataclass
class ArmComparison:
    """Treatment vs control: difference in like rate (treatment - control)."""

    treatment: str
    control: str
    difference: float
    ci_low: float
    ci_high: float
    relative_lift: float
    relative_ci_low: float
    relative_ci_high: float
    z: float
    p_value: float
    significant: bool
    required_per_arm: int
    decision: str


@dataclass
class ABResult:
    arms: list[ArmStats]
    comparisons: list[ArmComparison]
    unit: str
    alpha: float
    power: float
    mde: float
    warnings: list[str] = field(default_factory=list)
    srm_p_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "alpha": self.alpha, "power": self.power, "mde": self.mde,
                "arms": [asdict(a) for a in self.arms], "comparisons": [asdict(c) for c in self.comparisons],
                "srm_p_value": self.srm_p_value, "warnings": list(self.warnings)}


def required_sample_per_arm(baseline_rate: float, relative_mde: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Swipes per arm a two-sided two-proportion test needs to detect a relative change of `relative_mde`."""
    from scipy.stats import norm

    p1 = min(max(baseline_rate, 1e-6), 1 - 1e-6)
    p2 = min(max(p1 * (1 + relative_mde), 1e-6), 1 - 1e-6)
    if p1 == p2:
        return 2**31 - 1
    z_a, z_b = norm.ppf(1 - alpha / 2), norm.ppf(power)
    p_bar = (p1 + p2) / 2
    n = (z_a * math.sqrt(2 * p_bar * (1 - p_bar)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / (p2 - p1) ** 2
    return int(math.ceil(n))


def two_proportion_test(likes_a: int, n_a: int, likes_b: int, n_b: int, alpha: float = 0.05
                        ) -> tuple[float, float, float, float, float]:
    """(difference b - a, CI low, CI high, z, two-sided p): pooled z for the test, unpooled SE for the CI."""
    from scipy.stats import norm

    pa, pb = likes_a / n_a, likes_b / n_b
    pooled = (likes_a + likes_b) / (n_a + n_b)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    diff = pb - pa
    z = diff / se0 if se0 > 0 else 0.0
    p = float(2 * norm.sf(abs(z))) if se0 > 0 else 1.0
    se = math.sqrt(pa * (1 - pa) / n_a + pb * (1 - pb) / n_b)
    half = norm.ppf(1 - alpha / 2) * se
    return diff, diff - half, diff + half, z, p


def _ratio_mean_var(likes: np.ndarray, swipes: np.ndarray) -> tuple[float, float]:
    """Like rate sum(likes)/sum(swipes) over users and its delta-method variance."""
    n = len(likes)
    mx, my = likes.mean(), swipes.mean()
    r = mx / my
    if n < 2:
        return r, float("inf")
    vx, vy = likes.var(ddof=1), swipes.var(ddof=1)
    cxy = np.cov(likes, swipes, ddof=1)[0, 1]
    return r, float((vx - 2 * r * cxy + r * r * vy) / (n * my * my))


def _check_analysis_args(unit: str, alpha: float, power: float, mde: float) -> None:
    if unit not in ("swipe", "user"):
        raise ValueError(f"unit={unit!r} must be 'swipe' or 'user'")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha={alpha} and power={power} must be in (0, 1), e.g. 0.05 and 0.8")
    if mde <= 0:
        raise ValueError(f"mde={mde} must be a positive relative change, e.g. 0.05 for 5%")


def _arm_stats(frame: pd.DataFrame, control: str | None, weights: Mapping[str, float] | None
               ) -> tuple[str, dict[str, ArmStats]]:
    """(control arm, stats per arm with the control first); ValueError for a missing control or one arm."""
    names = sorted(frame["arm"].unique())
    if control is None:
        control = "control" if "control" in names else names[0]
    if control not in names:
        raise ValueError(f"control arm {control!r} has no outcomes; arms present: {names}. Pass --control <arm>")
    if len(names) < 2:
        raise ValueError(f"the outcomes hold only arm {names[0]!r}: an A/B test needs at least two arms")
    stats: dict[str, ArmStats] = {}
    for name in [control] + [n for n in names if n != control]:
        sub = frame[frame["arm"] == name]
        likes, swipes = int(sub["liked"].sum()), int(len(sub))
        stats[name] = ArmStats(arm=name, users=int(sub["user_id"].nunique()), swipes=swipes, likes=likes,
                               like_rate=likes / swipes, expected_share=(weights or {}).get(name))
    return control, stats


def _sample_ratio_mismatch(stats: Mapping[str, ArmStats], weights: Mapping[str, float],
                           warnings: list[str]) -> float:
    """Chi-square p-value of the users per arm against the configured split (a warning below 0.001)."""
    from scipy.stats import chisquare

    unknown = [n for n in stats if n not in weights]
    if unknown:
        raise ValueError(f"outcomes hold arm(s) {unknown} that are not in the configured arms {list(weights)}")
    observed = np.array([stats[n].users if n in stats else 0 for n in weights], dtype=float)
    expected = np.array(list(weights.values())) * observed.sum()
    srm_p = float(chisquare(observed, expected).pvalue)
    if srm_p < 0.001:
        warnings.append(f"sample ratio mismatch: users per arm {dict(zip(weights, observed.astype(int)))} are unlikely "
                        f"under the configured split {dict(weights)} (chi-square p={srm_p:.2g}); check the assignment "
                        "and logging before trusting the result")
    return srm_p


def _difference(c: ArmStats, t: ArmStats, per_user: pd.DataFrame, unit: str,
                alpha: float) -> tuple[float, float, float, float, float]:
    """(difference, CI low, CI high, z, p) of treatment - control in the chosen unit of analysis."""
    from scipy.stats import norm

    if unit == "swipe":
        return two_proportion_test(c.likes, c.swipes, t.likes, t.swipes, alpha)
    uc, ut = per_user[per_user["arm"] == c.arm], per_user[per_user["arm"] == t.arm]
    rc, vc = _ratio_mean_var(uc["sum"].to_numpy(float), uc["count"].to_numpy(float))
    rt, vt = _ratio_mean_var(ut["sum"].to_numpy(float), ut["count"].to_numpy(float))
    diff, se = rt - rc, math.sqrt(vc + vt)
    ok = se > 0 and math.isfinite(se)
    z = diff / se if ok else 0.0
    p = float(2 * norm.sf(abs(z))) if ok else 1.0
    half = norm.ppf(1 - alpha / 2) * se
    return diff, diff - half, diff + half, z, p


def _compare(c: ArmStats, t: ArmStats, per_user: pd.DataFrame, unit: str, alpha: float, power: float, mde: float,
             min_per_arm: int, warnings: list[str]) -> ArmComparison:
    """One treatment against the control, with the decision and any warning about the sample."""
    diff, lo, hi, z, p = _difference(c, t, per_user, unit, alpha)
    base = c.like_rate
    rel, rel_lo, rel_hi = ((diff / base, lo / base, hi / base) if base > 0 else (float("nan"),) * 3)
    required = max(min_per_arm, required_sample_per_arm(base, mde, alpha, power))
    smallest = min(c.swipes, t.swipes)
    significant = p < alpha
    if significant:
        decision = f"{t.arm} is better" if diff > 0 else f"{c.arm} is better"
        if smallest < min_per_arm:
            warnings.append(f"{t.arm} vs {c.arm}: significant, but with only {smallest} swipes in an arm "
                            f"(< {min_per_arm}) the normal approximation is shaky; keep collecting")
    elif smallest < required:
        decision = "inconclusive: sample too small"
        warnings.append(f"{t.arm} vs {c.arm}: sample too small to decide: {smallest} swipes in the smaller arm, "
                        f"about {required} per arm are needed to detect a {mde:.0%} relative change at a "
                        f"{base:.1%} like rate (alpha={alpha}, power={power})")
    else:
        decision = "no significant difference"
    return ArmComparison(treatment=t.arm, control=c.arm, difference=diff, ci_low=lo, ci_high=hi, relative_lift=rel,
                         relative_ci_low=rel_lo, relative_ci_high=rel_hi, z=z, p_value=p, significant=significant,
                         required_per_arm=required, decision=decision)


def analyze_outcomes(outcomes: pd.DataFrame, control: str | None = None, alpha: float = 0.05, power: float = 0.8,
                     mde: float = 0.05, min_per_arm: int = 100, unit: str = "swipe",
                     arms: str | Mapping[str, float] | None = None) -> ABResult:
    """Like rate per arm and each treatment vs `control` (default: an arm named control, else the first).

    A comparison is "inconclusive: sample too small" when either arm has fewer swipes
    than the power calculation needs to detect a relative change of `mde` at the
    control's like rate (or fewer than `min_per_arm`) and the difference is not
    significant. `arms` (the configured split) adds a sample-ratio-mismatch check.
    """
    _check_analysis_args(unit, alpha, power, mde)
    frame = outcomes if "liked" in outcomes.columns else normalise_outcomes(outcomes)
    if frame.empty:
        raise ValueError("the outcomes hold no rows: nothing to analyse")
    weights = parse_arms(arms) if arms is not None else None
    control, stats = _arm_stats(frame, control, weights)
    per_user = frame.groupby(["arm", "user_id"])["liked"].agg(["sum", "count"]).reset_index()
    warnings: list[str] = []
    srm_p = _sample_ratio_mismatch(stats, weights, warnings) if weights is not None else None
    comparisons = [_compare(stats[control], t, per_user, unit, alpha, power, mde, min_per_arm, warnings)
                   for name, t in stats.items() if name != control]
    for w in warnings:
        log.warning("A/B analysis: %s", w)
    return ABResult(arms=list(stats.values()), comparisons=comparisons, unit=unit, alpha=alpha, power=power,
                    mde=mde, warnings=warnings, srm_p_value=srm_p)


def format_result(result: ABResult) -> str:
    """A plain-text report: one line per arm, one block per comparison, then warnings."""
    lines = [f"{'arm':<16}{'users':>8}{'swipes':>9}{'likes':>8}{'like rate':>11}"]
    for a in result.arms:
        lines.append(f"{a.arm:<16}{a.users:>8}{a.swipes:>9}{a.likes:>8}{a.like_rate:>10.2%} ")
    level = int(round((1 - result.alpha) * 100))
    for cmp in result.comparisons:
        lines.append("")
        lines.append(f"{cmp.treatment} vs {cmp.control} (unit: {result.unit}):")
        lines.append(f"  difference {cmp.difference:+.4f} ({level}% CI {cmp.ci_low:+.4f} .. {cmp.ci_high:+.4f})")
        lines.append(f"  relative lift {cmp.relative_lift:+.2%} ({level}% CI {cmp.relative_ci_low:+.2%} .. "
                     f"{cmp.relative_ci_high:+.2%})")
        lines.append(f"  z = {cmp.z:.3f}, p-value = {cmp.p_value:.4g} -> {cmp.decision}")
    if result.srm_p_value is not None:
        lines.append(f"\nsample ratio check: p = {result.srm_p_value:.3g}")
    for w in result.warnings:
        lines.append(f"WARNING: {w}")
    return "\n".join(lines)


__all__ = [
    "ABResult", "ArmComparison", "ArmStats", "LoggedArms", "analyze_outcomes", "assign_arm", "assign_users",
    "format_result", "hash_unit", "normalise_outcomes", "outcomes_from_log", "parse_arms", "read_logged_arms",
    "read_outcomes", "required_sample_per_arm", "two_proportion_test",
]

"""The promotion gate (like TFX's model blessing): a version enters production only if its
offline metrics on the TEST part of the time split pass absolute thresholds, beat the baselines
measured on the same split in the same evaluation (`baselines`: at least 1.1x most-popular on
NDCG@10 by default), show no collapsed embeddings (`health`), and are no worse than the current
production version's on the same data by more than an allowed relative drop."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import Field, field_validator

from ml.config import StrictModel, load_config_file, validate_config

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
BaselineName = Literal["popular", "random", "als", "ease"]
HealthLimit = Literal["max_dead_unit_share", "min_item_effective_rank", "min_user_effective_rank",
                      "max_item_mean_cosine", "max_user_mean_cosine"]
BASELINE_LABELS = {"popular": "most-popular", "random": "random", "als": "implicit ALS", "ease": "EASE"}
DEFAULT_HEALTH: dict[str, float] = {
    # a collapsed model (issue 13: L2 0.01 on every kernel) had 75% dead units, item effective
    # rank 12 of 768 and mean item-item cosine 0.87; a healthy one is far from all of these
    "max_dead_unit_share": 0.5, "min_item_effective_rank": 8.0, "min_user_effective_rank": 4.0,
    "max_item_mean_cosine": 0.8, "max_user_mean_cosine": 0.9,
}


class GateConfig(StrictModel):
    """Thresholds per metric: `absolute` minimums, `relative` allowed drops against production."""

    absolute: dict[str, FiniteFloat] = Field(
        default_factory=lambda: {"ndcg_at_10": 0.01, "recall_at_50": 0.05},
        json_schema_extra={"hint": "the candidate's minimum value of the metric"})
    relative: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=lambda: {"ndcg_at_10": 0.01},
        json_schema_extra={"hint": "the allowed relative drop: a non-negative fraction such as 0.01 for -1%"})
    baselines: dict[BaselineName, dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]]] = Field(
        default_factory=lambda: {"popular": {"ndcg_at_10": 1.1}},
        json_schema_extra={"hint": "per baseline (popular, random, als, ease) the candidate's minimum ratio to it on "
                                   "the same split, e.g. popular: {ndcg_at_10: 1.1}, als: {ndcg_at_10: 1.0}"})
    health: dict[HealthLimit, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=lambda: dict(DEFAULT_HEALTH),
        json_schema_extra={"hint": "limits on the embedding-health figures: max_dead_unit_share, "
                                   "min_item_effective_rank, min_user_effective_rank, max_item_mean_cosine, "
                                   "max_user_mean_cosine"})

    def baselines_needed(self) -> tuple[str, ...]:
        """The baselines the candidate's evaluation must run for the `baselines` checks."""
        return tuple(name for name, limits in self.baselines.items() if limits)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None, source: str = "<gate>") -> "GateConfig":
        """The `gate` section of a registry config; a missing kind takes its default, `{}` disables it."""
        return validate_config(cls, raw, source, root="gate")


@dataclass
class GateCheck:
    metric: str
    kind: str                  # absolute | relative | baseline | health
    value: float | None
    threshold: float
    passed: bool
    baseline: float | None = None
    message: str = ""


@dataclass
class GateResult:
    passed: bool
    checks: list[GateCheck]
    candidate_version: str | None = None
    production_version: str | None = None
    notes: list[str] = field(default_factory=list)   # how the comparison was made (evaluation set, cold items)

    def failures(self) -> list[GateCheck]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        notes = f" [{'; '.join(self.notes)}]" if self.notes else ""
        if self.passed:
            return f"gate passed ({len(self.checks)} checks){notes}"
        return "gate failed: " + "; ".join(c.message for c in self.failures()) + notes

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "candidate_version": self.candidate_version,
                "production_version": self.production_version, "checks": [asdict(c) for c in self.checks],
                "notes": list(self.notes)}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def baseline_checks(candidate: Mapping[str, float], cfg: GateConfig) -> list[GateCheck]:
    """candidate / baseline >= the configured ratio, both measured in the candidate's evaluation."""
    checks: list[GateCheck] = []
    for base, limits in cfg.baselines.items():
        label = BASELINE_LABELS.get(base, base)
        for metric, minimum in limits.items():
            value, base_value = candidate.get(metric), candidate.get(f"{base}.{metric}")
            lift = candidate.get(f"lift_over_{base}.{metric}")
            if not (_finite(value) and _finite(base_value) and _finite(lift)):
                checks.append(GateCheck(f"lift_over_{base}.{metric}", "baseline", None, minimum, False, base_value,
                                        message=f"{metric} against {label} is missing from the evaluation (the {base} "
                                                f"baseline did not run or scored 0); the gate needs "
                                                f"{metric} >= {minimum:g}x {label}"))
                continue
            ok = lift >= minimum
            checks.append(GateCheck(f"lift_over_{base}.{metric}", "baseline", lift, minimum, ok, base_value,
                                    message=f"{metric}={value:.4f} is {lift:.2f}x {label} ({base_value:.4f}); "
                                            f"{'required' if ok else 'needs'} >= {minimum:.2f}x "
                                            f"(gate.baselines.{base}.{metric})"))
    return checks


def health_checks(candidate: Mapping[str, float], cfg: GateConfig) -> list[GateCheck]:
    """Refuse collapsed embeddings: each `max_<figure>` / `min_<figure>` limit on `health_<figure>`."""
    checks: list[GateCheck] = []
    for limit, threshold in cfg.health.items():
        bound, figure = limit.split("_", 1)
        metric = f"health_{figure}"
        value = candidate.get(metric)
        if not _finite(value):
            checks.append(GateCheck(metric, "health", None, threshold, False,
                                    message=f"{metric} is missing: the model records no embedding health (trained "
                                            f"before towerops measured it?); retrain it, or remove gate.health.{limit}"))
            continue
        ok = value <= threshold if bound == "max" else value >= threshold
        sign = ("<=" if ok else ">") if bound == "max" else (">=" if ok else "<")
        checks.append(GateCheck(metric, "health", value, threshold, ok,
                                message=f"{metric}={value:.4g} {sign} {'allowed' if bound == 'max' else 'required'} "
                                        f"{threshold:g} (gate.health.{limit})"
                                        f"{'' if ok else ': the embeddings look collapsed'}"))
    return checks


def check_gate(candidate: Mapping[str, float], production: Mapping[str, float] | None, cfg: GateConfig,
               candidate_version: str | None = None, production_version: str | None = None) -> GateResult:
    """Compare metric dicts (same evaluation data) against the thresholds."""
    checks: list[GateCheck] = []
    for metric, minimum in cfg.absolute.items():
        value = candidate.get(metric)
        if value is None or not math.isfinite(value):
            checks.append(GateCheck(metric, "absolute", None, minimum, False,
                                    message=f"{metric} missing from the evaluation (have: {sorted(candidate)[:8]}...)"))
            continue
        ok = value >= minimum
        checks.append(GateCheck(metric, "absolute", value, minimum, ok,
                                message=f"{metric}={value:.4f} {'>=' if ok else '<'} required {minimum:.4f}"
                                        f"{'' if ok else f' (short by {minimum - value:.4f})'}"))
    if production is not None:
        for metric, max_drop in cfg.relative.items():
            value, base = candidate.get(metric), production.get(metric)
            if value is None or base is None or not (math.isfinite(value) and math.isfinite(base)):
                checks.append(GateCheck(metric, "relative", value, max_drop, False, base,
                                        message=f"{metric} missing for the candidate or production evaluation"))
                continue
            floor = base * (1.0 - max_drop)
            ok = value >= floor
            change = (value - base) / base if base else 0.0
            checks.append(GateCheck(metric, "relative", value, floor, ok, base,
                                    message=f"{metric}={value:.4f} vs production {base:.4f} ({change:+.2%}; "
                                            f"allowed -{max_drop:.2%})"))
    checks += baseline_checks(candidate, cfg) + health_checks(candidate, cfg)
    return GateResult(all(c.passed for c in checks), checks, candidate_version, production_version)


class RegistryConfig(StrictModel):
    """configs/registry.yaml: the registered model's name, the gate and the evaluation's cut-offs."""

    model_name: str = Field("two_tower", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
                            json_schema_extra={"hint": "letters, digits, _ . -"})
    gate: GateConfig = Field(default_factory=GateConfig)
    eval_ks: tuple[Annotated[int, Field(ge=1)], ...] = (10, 50)

    @field_validator("eval_ks")
    @classmethod
    def _some_k(cls, ks: tuple[int, ...]) -> tuple[int, ...]:
        if not ks:
            raise ValueError("must list at least one cut-off K, e.g. [10, 50]")
        return ks


def load_registry_config(path: str | Path | None = None) -> RegistryConfig:
    """The registry config from a YAML/JSON file; without one, the `registry` section of the platform
    config (towerops.yaml, ml.platform), whose defaults configs/registry.yaml spells out."""
    if not path:
        from ml.platform import section

        found = section("registry")
        return validate_config(RegistryConfig, found.raw, found.source)
    return load_config_file(RegistryConfig, path, "registry config", "a mapping with model_name, gate, eval_ks")

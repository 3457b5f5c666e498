"""The promotion gate (like TFX's model blessing): a version enters production only if
its offline metrics pass absolute thresholds and are no worse than the current production
version's, measured on the same evaluation data, by more than an allowed relative drop."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml


@dataclass
class GateConfig:
    absolute: dict[str, float] = field(default_factory=lambda: {"ndcg_at_10": 0.0})
    relative: dict[str, float] = field(default_factory=lambda: {"ndcg_at_10": 0.01})  # max relative drop

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None, source: str = "<gate>") -> "GateConfig":
        raw = dict(raw or {})
        unknown = set(raw) - {"absolute", "relative"}
        if unknown:
            raise ValueError(f"{source}: unknown gate keys {sorted(unknown)}; use 'absolute' and 'relative'")
        cfg = cls(absolute={}, relative={})
        for kind in ("absolute", "relative"):
            for metric, value in (raw.get(kind) or {}).items():
                if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
                    raise ValueError(f"{source}: gate.{kind}.{metric}={value!r} must be a number")
                if kind == "relative" and value < 0:
                    raise ValueError(f"{source}: gate.relative.{metric}={value} is the allowed relative drop; "
                                     "use a non-negative fraction such as 0.01 for -1%")
                getattr(cfg, kind)[metric] = float(value)
        return cfg


@dataclass
class GateCheck:
    metric: str
    kind: str                  # absolute | relative
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

    def failures(self) -> list[GateCheck]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        if self.passed:
            return f"gate passed ({len(self.checks)} checks)"
        return "gate failed: " + "; ".join(c.message for c in self.failures())

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "candidate_version": self.candidate_version,
                "production_version": self.production_version, "checks": [asdict(c) for c in self.checks]}


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
    return GateResult(all(c.passed for c in checks), checks, candidate_version, production_version)


@dataclass
class RegistryConfig:
    model_name: str = "two_tower"
    gate: GateConfig = field(default_factory=GateConfig)
    eval_ks: tuple[int, ...] = (10,)


def load_registry_config(path: str | Path | None = None) -> RegistryConfig:
    if not path:
        return RegistryConfig()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"registry config {p} does not exist")
    raw = yaml.safe_load(p.read_text()) or {}
    unknown = set(raw) - {"model_name", "gate", "eval_ks"}
    if unknown:
        raise ValueError(f"{p}: unknown keys {sorted(unknown)}; allowed: model_name, gate, eval_ks")
    return RegistryConfig(model_name=str(raw.get("model_name", "two_tower")),
                          gate=GateConfig.from_mapping(raw.get("gate"), str(p)),
                          eval_ks=tuple(int(k) for k in raw.get("eval_ks", (10,))))

"""Monitoring configuration (`configs/monitoring.yaml`): reference sizes, drift settings,
alert thresholds, webhook and rollback policy. Validated up front so a typo in a
threshold fails before any report is computed or any MLflow run is started."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

DEFAULT_CONFIG_PATH = Path("configs/monitoring.yaml")
OPS = {">": lambda v, t: v > t, ">=": lambda v, t: v >= t, "<": lambda v, t: v < t, "<=": lambda v, t: v <= t}
SEVERITIES = ("warning", "error")

DEFAULTS: dict[str, Any] = {
    "reference": {"sample_users": 2000, "sample_items": 5000, "top_k": 10, "popular_top_n": 10, "calibration_bins": 20},
    "drift": {"pca_components": 20, "embedding_method": "model", "embedding_sample": 300, "min_outcomes": 30},
    "performance": {"window": "5min"},
    "alerts": [],
    "webhook": {"url_env": "TOWEROPS_ALERT_WEBHOOK_URL", "timeout_s": 5.0, "attempts": 4, "backoff_s": 0.5},
    "rollback": {"enabled": False, "on_alerts": [], "model_name": "two_tower", "alias": "production"},
    "workspace": {"project": "towerops"},
}


@dataclass(frozen=True)
class AlertRule:
    """`metric op threshold` fires alert `name` at `severity`."""

    name: str
    metric: str
    op: str
    threshold: float
    severity: str = "warning"

    def fires(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)


@dataclass
class MonitoringConfig:
    reference: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS["reference"]))
    drift: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS["drift"]))
    performance: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS["performance"]))
    alerts: list[AlertRule] = field(default_factory=list)
    webhook: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS["webhook"]))
    rollback: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS["rollback"]))
    workspace: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS["workspace"]))

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "drift": self.drift, "performance": self.performance,
                "alerts": [vars(a) for a in self.alerts], "webhook": self.webhook, "rollback": self.rollback,
                "workspace": self.workspace}


def _merge(base: dict, extra: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_config(raw: Mapping[str, Any] | None, source: str = "<dict>") -> MonitoringConfig:
    """Validate a config mapping; errors name the file, the entry and the fix."""
    raw = dict(raw or {})
    unknown = set(raw) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"{source}: unknown section(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    merged = _merge({k: v for k, v in DEFAULTS.items() if k != "alerts"}, {k: v for k, v in raw.items() if k != "alerts"})
    rules: list[AlertRule] = []
    for n, entry in enumerate(raw.get("alerts") or []):
        where = f"{source}: alerts[{n}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a mapping {{name, metric, op, threshold, severity}}, got {entry!r}")
        missing = [k for k in ("name", "metric", "threshold") if k not in entry]
        if missing:
            raise ValueError(f"{where} ({entry.get('name', '?')}) is missing {', '.join(missing)}")
        op = str(entry.get("op", ">"))
        if op not in OPS:
            raise ValueError(f"{where} ({entry['name']}): op {op!r} is not one of {sorted(OPS)}")
        severity = str(entry.get("severity", "warning")).lower()
        if severity not in SEVERITIES:
            raise ValueError(f"{where} ({entry['name']}): severity {severity!r} is not one of {SEVERITIES}")
        try:
            threshold = float(entry["threshold"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where} ({entry['name']}): threshold {entry['threshold']!r} is not a number") from exc
        rules.append(AlertRule(str(entry["name"]), str(entry["metric"]), op, threshold, severity))
    names = [r.name for r in rules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{source}: alert names must be unique; repeated: {dupes}")
    policy = merged["rollback"]
    bad = [a for a in policy.get("on_alerts") or [] if a not in names]
    if bad:
        raise ValueError(f"{source}: rollback.on_alerts names {bad}, which are not alerts in this config ({names})")
    return MonitoringConfig(reference=merged["reference"], drift=merged["drift"], performance=merged["performance"],
                            alerts=rules, webhook=merged["webhook"], rollback=policy, workspace=merged["workspace"])


def load_monitoring_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> MonitoringConfig:
    """Read `configs/monitoring.yaml` (or `path`); `overrides` is merged on top (tests, CLI)."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None or DEFAULT_CONFIG_PATH.exists():
        p = Path(path) if path is not None else DEFAULT_CONFIG_PATH
        if not p.is_file():
            raise FileNotFoundError(f"monitoring config {p} does not exist; pass --config configs/monitoring.yaml")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"monitoring config {p} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError(f"monitoring config {p} must be a mapping of sections, got {type(raw).__name__}")
        source = str(p)
    if overrides:
        raw = _merge(raw, {k: v for k, v in overrides.items() if k != "alerts"})
        if "alerts" in overrides:
            raw["alerts"] = overrides["alerts"]
    return parse_config(raw, source)

"""Monitoring configuration (`configs/monitoring.yaml`): reference sizes, drift settings,
alert thresholds, webhook and rollback policy. Validated up front so a typo in a
threshold fails before any report is computed or any MLflow run is started."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import ConfigDict, Field, field_validator, model_validator

from ml.config import KeyProblem, StrictModel, read_config_file, validate_config

OPS = {">": lambda v, t: v > t, ">=": lambda v, t: v >= t, "<": lambda v, t: v < t, "<=": lambda v, t: v <= t}
SEVERITIES = ("warning", "error")

class Section(StrictModel):
    """A config section; it also reads as a mapping (`cfg.drift["pca_components"]`, `{**cfg.reference}`)
    for code that passes a section on as a settings dict."""

    def keys(self) -> list[str]:
        return list(type(self).model_fields)

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in type(self).model_fields else default


class ReferenceSection(Section):
    sample_users: int = Field(2000, ge=1, description="users sampled for embeddings / top-k score references")
    sample_items: int = Field(5000, ge=1)
    top_k: int = Field(10, ge=1, description="recommendations per user in prediction drift")
    popular_top_n: int = Field(10, ge=1, description='"popular" = the n most-liked items in the training data')
    calibration_bins: int = Field(20, ge=1, description="score -> like-rate bins: the model's expected like rate")


class DriftSection(Section):
    pca_components: int = Field(20, ge=1, description="PCA dims the embeddings are projected to before EmbeddingsDrift")
    embedding_method: Literal["model", "distance"] = "model"
    embedding_sample: int = Field(300, ge=2, description="rows per side given to Evidently's embedding drift")
    min_outcomes: int = Field(30, ge=0, description="fewer recommended-and-swiped pairs: no online quality alert")


class PerformanceSection(Section):
    window: str = Field("5min", description="pandas offset for per-window latency percentiles / throughput")

    @field_validator("window")
    @classmethod
    def _offset(cls, value: str) -> str:
        from pandas.tseries.frequencies import to_offset

        try:
            to_offset(value)
        except ValueError:
            raise ValueError("is not a pandas offset: use e.g. 5min, 1h or 1D") from None
        return value


class AlertRule(StrictModel):
    """`metric op threshold` fires alert `name` at `severity`."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1)
    metric: str = Field(min_length=1)
    op: Literal[">", ">=", "<", "<="] = ">"
    threshold: float
    severity: Literal["warning", "error"] = "warning"

    @field_validator("severity", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    def fires(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)


def _default_alerts() -> list[AlertRule]:
    rules = [("item_data_drift", "item_drift_share", ">=", 0.5, "error"),
             ("user_data_drift", "user_drift_share", ">=", 0.5, "error"),
             ("item_embedding_drift", "item_embedding_drift", ">", 0.65, "warning"),
             ("user_embedding_drift", "user_embedding_drift", ">", 0.65, "warning"),
             ("new_categories", "new_category_share", ">", 0.05, "warning"),
             ("like_rate_drop", "like_rate_drop", ">", 0.10, "error"),
             ("latency_p99", "latency_p99_ms", ">", 250.0, "warning")]
    return [AlertRule(name=n, metric=m, op=o, threshold=t, severity=s) for n, m, o, t, s in rules]


class WebhookSection(Section):
    url_env: str = Field("TOWEROPS_ALERT_WEBHOOK_URL", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                         description="environment variable holding the Slack-compatible webhook URL")
    url: str | None = Field(None, description="env:NAME reference to the variable holding the URL")
    timeout_s: float = Field(5.0, gt=0)
    attempts: int = Field(4, ge=1, description="1 try + retries, exponential backoff")
    backoff_s: float = Field(0.5, ge=0)

    @field_validator("url")
    @classmethod
    def _reference(cls, url: str | None) -> str | None:
        if url is not None and not (url.startswith("env:") and url[4:].strip().isidentifier()):  # value not echoed
            raise KeyProblem("must be a reference env:NAME to the environment variable holding the alert URL "
                             "(the URL carries its token: never write it in a config file), "
                             "e.g. url: env:TOWEROPS_ALERT_WEBHOOK_URL")
        return url


class RollbackSection(Section):
    enabled: bool = False
    on_alerts: list[str] = Field(default_factory=list, description="alert names that trigger it, e.g. [like_rate_drop]")
    model_name: str = "two_tower"
    alias: str = "production"


DRIFT_ALERTS = ["item_data_drift", "user_data_drift", "item_embedding_drift", "user_embedding_drift"]


class RetrainSection(Section):
    """Which alerts start a retrain (`towerops monitor run --on-alert retrain`, or always with `enabled`)."""

    enabled: bool = Field(False, description="retrain on these alerts even without --on-alert retrain")
    on_alerts: list[str] = Field(default_factory=lambda: list(DRIFT_ALERTS),
                                 description="alert names that start a retrain, e.g. [item_data_drift]")
    data: str | None = Field(None, description="data to retrain on (default: the monitored window's source)")
    window_days: float | None = Field(None, gt=0, description="train on the last N days of interactions")
    training_config: str | None = Field(None, description="training config (default: towerops.yaml's training)")


class WorkspaceSection(Section):
    project: str = "towerops"


class MonitoringConfig(StrictModel):
    """configs/monitoring.yaml; missing keys take these defaults (the file spells them out)."""

    reference: ReferenceSection = Field(default_factory=ReferenceSection)
    drift: DriftSection = Field(default_factory=DriftSection)
    performance: PerformanceSection = Field(default_factory=PerformanceSection)
    alerts: list[AlertRule] = Field(default_factory=_default_alerts)
    webhook: WebhookSection = Field(default_factory=WebhookSection)
    rollback: RollbackSection = Field(default_factory=RollbackSection)
    retrain: RetrainSection = Field(default_factory=RetrainSection)
    workspace: WorkspaceSection = Field(default_factory=WorkspaceSection)

    @field_validator("alerts", mode="before")
    @classmethod
    def _no_alerts(cls, value: Any) -> Any:
        return [] if value is None else value

    @model_validator(mode="after")
    def _names(self) -> "MonitoringConfig":
        names = [r.name for r in self.alerts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"alert names must be unique; repeated: {dupes}")
        bad = [a for a in self.rollback.on_alerts if a not in names]
        if bad:
            raise ValueError(f"rollback.on_alerts names {bad}, which are not alerts in this config ({names}): "
                             "name alerts of the alerts list")
        if self.retrain.on_alerts != DRIFT_ALERTS:  # the default list may name alerts a config dropped: no error
            bad = [a for a in self.retrain.on_alerts if a not in names]
            if bad:
                raise ValueError(f"retrain.on_alerts names {bad}, which are not alerts in this config ({names}): "
                                 "name alerts of the alerts list")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="python")


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
    return validate_config(MonitoringConfig, raw, source)


def load_monitoring_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> MonitoringConfig:
    """Read `path`, else the `monitoring` section of the platform config (towerops.yaml, ml.platform;
    configs/monitoring.yaml spells out its defaults); `overrides` is merged on top (tests, CLI)."""
    if path is not None:
        p = Path(path)
        raw = read_config_file(p, "monitoring config", "a mapping of sections")
        source = str(p)
    else:
        from ml.platform import section

        found = section("monitoring")
        raw, source = dict(found.raw), found.source
    if overrides:
        raw = _merge(raw, {k: v for k, v in overrides.items() if k != "alerts"})
        if "alerts" in overrides:
            raw["alerts"] = overrides["alerts"]
    return parse_config(raw, source)

"""What monitoring does about an alert besides reporting it: retrain (`monitor run --on-alert retrain`).

Which alerts start a retrain is the `retrain` section of the monitoring config (`on_alerts`,
default the data and embedding drift alerts). The retrain itself is
`registry.continuous.retrain` (train -> evaluate -> register -> gate -> production, nested runs
under one parent); monitoring adds the new training run's monitoring reference, so the next
`monitor run` compares against the model that then holds production.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ml.logs import get_logger
from monitoring.alerts import Alert
from monitoring.config import MonitoringConfig, load_monitoring_config

log = get_logger("monitoring")

ACTIONS = ("retrain",)


def retrain_with_reference(data: Any, registry: Any = None, training_config: str | None = None,
                           overrides: dict | None = None, window_days: float | None = None, dsn: str | None = None,
                           batch_out: Any = "outputs/batch", table_prefix: str = "towerops", trigger: str = "retrain",
                           reason: str | None = None, config: MonitoringConfig | None = None) -> Any:
    """`registry.continuous.retrain`, logging the monitoring reference on the new training run."""
    from monitoring.reference import log_reference
    from registry.continuous import retrain

    if data is None:
        raise ValueError("no data to retrain on: pass --data <folder | postgresql://... | env:VAR>, set retrain.data "
                         "in the monitoring config, or data.source in towerops.yaml")
    settings = (config or load_monitoring_config()).reference

    def reference(trained: Any, window: Any) -> None:
        log_reference(trained.run_id, trained.model_dir, window, settings)

    return retrain(data, registry, training_config, overrides, window_days=window_days, dsn=dsn, batch_out=batch_out,
                   table_prefix=table_prefix, trigger=trigger, reason=reason, on_trained=reference)


def retrain_triggers(alerts: Sequence[Alert], config: MonitoringConfig, requested: bool) -> list[Alert]:
    """The fired alerts that start a retrain: those named in `retrain.on_alerts`, when retraining was
    asked for (`--on-alert retrain`) or `retrain.enabled` is set."""
    policy = config.retrain
    if not (requested or policy.enabled):
        return []
    wanted = set(policy.on_alerts)
    return [a for a in alerts if a.name in wanted]


def retrain_on_alerts(alerts: Sequence[Alert], config: MonitoringConfig, data: Any, requested: bool = True,
                      registry: Any = None, dsn: str | None = None,
                      retrain_fn: Callable[..., Any] | None = None) -> Any:
    """Start a retrain when a configured alert fired; returns its result (None: nothing to do).
    `data` is the monitored source unless `retrain.data` names another."""
    triggers = retrain_triggers(alerts, config, requested)
    if not triggers:
        if alerts and (requested or config.retrain.enabled):
            log.info("no retrain: fired alerts %s are not in retrain.on_alerts %s", [a.name for a in alerts],
                     config.retrain.on_alerts)
        return None
    policy = config.retrain
    reason = "monitoring alert(s): " + "; ".join(a.message for a in triggers)
    log.warning("retrain policy: retraining because %s", reason)
    fn = retrain_fn or retrain_with_reference
    return fn(policy.data or data, registry=registry, training_config=policy.training_config,
              window_days=policy.window_days, dsn=dsn, trigger="monitoring", reason=reason[:1000], config=config)

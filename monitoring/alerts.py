"""Alerts: thresholds from config evaluated on a monitor run's metrics, logged to
`logs/monitoring.log` (WARN / ERROR), POSTed to a Slack-compatible webhook with
retries, and an optional rollback policy.

Why here and not in Evidently: the open-source Evidently UI has no alerting, so the
monitor job itself is the alerting engine; the numbers come from the same snapshots.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

from ml.logs import get_logger
from monitoring.config import AlertRule, MonitoringConfig

log = get_logger("monitoring")


@dataclass(frozen=True)
class Alert:
    name: str
    metric: str
    value: float
    op: str
    threshold: float
    severity: str

    @property
    def message(self) -> str:
        return f"{self.name}: {self.metric}={self.value:.4g} {self.op} {self.threshold:g}"


class WebhookDeliveryError(ConnectionError):
    """The webhook did not accept the alert after all attempts."""


def evaluate_alerts(metrics: Mapping[str, float], rules: Sequence[AlertRule]) -> list[Alert]:
    """Alerts whose rule fires; a rule on a metric this run did not compute is skipped (logged)."""
    fired = []
    for rule in rules:
        value = metrics.get(rule.metric)
        if value is None:
            log.debug("alert %s: metric %s not computed in this window, skipped", rule.name, rule.metric)
            continue
        if rule.fires(float(value)):
            fired.append(Alert(rule.name, rule.metric, float(value), rule.op, rule.threshold, rule.severity))
    return fired


def log_alerts(alerts: Sequence[Alert], context: str = "") -> None:
    for a in alerts:
        log.log(logging.ERROR if a.severity == "error" else logging.WARNING, "ALERT %s%s", a.message,
                f" ({context})" if context else "")


def slack_payload(alerts: Sequence[Alert], context: Mapping[str, Any]) -> dict[str, Any]:
    """Slack-compatible body: `text` for humans, plus structured fields for machines."""
    worst = "error" if any(a.severity == "error" for a in alerts) else "warning"
    lines = [f"towerops monitoring: {len(alerts)} alert(s) [{worst}]"] + [f"- {a.message}" for a in alerts]
    if context.get("model"):
        lines.append(f"model: {context['model']}")
    if context.get("run_id"):
        lines.append(f"monitor run: {context['run_id']}")
    return {"text": "\n".join(lines), "severity": worst, "alerts": [asdict(a) for a in alerts],
            "context": {k: str(v) for k, v in context.items()}}


def post_webhook(url: str, payload: Mapping[str, Any], attempts: int = 4, backoff_s: float = 0.5,
                 timeout_s: float = 5.0) -> int:
    """POST JSON, retrying on connection errors, 429 and 5xx with exponential backoff.

    Returns the number of attempts used; raises WebhookDeliveryError when all fail
    (a 4xx other than 429 is not retried: the message or URL is wrong).
    """
    import requests
    from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

    from ml.secrets import redact_url, redact_urls, remember_secret

    remember_secret(url)  # the URL carries the token: scrubbed from every log line from now on
    shown = redact_url(url)

    class _Retryable(Exception):
        pass

    def _send() -> None:
        try:
            resp = requests.post(url, json=dict(payload), timeout=timeout_s)
        except requests.RequestException as exc:
            # requests puts the URL (path and query: the token) in its messages
            raise _Retryable(redact_urls(f"{type(exc).__name__}: {exc}", [url])) from None
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Retryable(f"HTTP {resp.status_code}")
        if resp.status_code >= 400:
            body = redact_urls(resp.text[:200], [url])
            raise WebhookDeliveryError(f"webhook {shown} refused the alert: HTTP {resp.status_code} {body!r}; "
                                       "check the webhook URL in the environment (a 4xx is not retried)")

    used = 0
    try:
        for attempt in Retrying(stop=stop_after_attempt(max(1, attempts)),
                                wait=wait_exponential(multiplier=backoff_s, max=30),
                                retry=retry_if_exception(lambda e: isinstance(e, _Retryable)), reraise=False):
            with attempt:
                used = attempt.retry_state.attempt_number
                if used > 1:
                    log.info("webhook: retry %d", used)
                _send()
    except RetryError as exc:
        cause = exc.last_attempt.exception()
        raise WebhookDeliveryError(f"webhook {shown} delivery failed after {used} attempt(s): {cause}") from None
    return used


def webhook_env_name(config: MonitoringConfig) -> str:
    """The environment variable holding the alert URL: `webhook.url: env:NAME`, else `webhook.url_env`."""
    ref = config.webhook.get("url")
    if ref:
        return str(ref)[len("env:"):]
    return config.webhook.get("url_env") or "TOWEROPS_ALERT_WEBHOOK_URL"


def deliver_alerts(alerts: Sequence[Alert], config: MonitoringConfig, context: Mapping[str, Any]) -> int | None:
    """Send alerts to the webhook whose URL is in the environment (`webhook.url: env:NAME` or
    `webhook.url_env`); the URL is never logged. None = not configured."""
    if not alerts:
        return None
    env = webhook_env_name(config)
    url = os.environ.get(env)
    if not url:
        log.info("no webhook: $%s is not set; alerts are in logs/monitoring.log only", env)
        return None
    started = time.time()
    used = post_webhook(url, slack_payload(alerts, context), attempts=int(config.webhook.get("attempts", 4)),
                        backoff_s=float(config.webhook.get("backoff_s", 0.5)),
                        timeout_s=float(config.webhook.get("timeout_s", 5.0)))
    log.info("webhook ($%s): %d alert(s) delivered in %d attempt(s), %.1fs", env, len(alerts), used, time.time() - started)
    return used


RollbackFn = Callable[..., Any]


def apply_rollback_policy(alerts: Sequence[Alert], config: MonitoringConfig,
                          rollback: RollbackFn | None = None) -> Any:
    """Roll production back when an alert named in `rollback.on_alerts` fired.

    `rollback(model_name=..., alias=..., reason=...)` defaults to the registry's
    `open_registry(name=...).rollback(reason=..., trigger="monitoring")` (registry/stages.py),
    imported only here: monitoring sits after the registry in the chain and needs it for
    nothing else. Returns its result, or None.
    """
    policy = config.rollback
    if not policy.get("enabled"):
        return None
    triggers = [a for a in alerts if a.name in set(policy.get("on_alerts") or [])]
    if not triggers:
        return None
    if rollback is None:
        try:
            from registry.service import open_registry
        except ImportError as exc:
            raise RuntimeError(
                "rollback policy is enabled but registry.stages.open_registry is not available "
                f"({exc}); disable rollback.enabled in the monitoring config or install the registry module"
            ) from exc

        def rollback(model_name: str, alias: str, reason: str) -> Any:
            return open_registry(name=model_name).rollback(reason=reason, actor="towerops-monitoring",
                                                           trigger="monitoring")
    reason = "monitoring alert(s): " + "; ".join(a.message for a in triggers)
    log.error("rollback policy: rolling back %s@%s because %s", policy.get("model_name"), policy.get("alias"), reason)
    return rollback(model_name=policy.get("model_name", "two_tower"), alias=policy.get("alias", "production"),
                    reason=reason)

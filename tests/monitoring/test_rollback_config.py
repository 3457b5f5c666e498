"""Monitoring's automatic rollback opens the registry the platform config describes (its gate,
its audit trail), not the defaults: the rollback's reconcile runs the team's gate."""

from __future__ import annotations

import yaml


def test_the_rollback_policy_opens_the_configured_registry(tmp_path, monkeypatch) -> None:
    from monitoring.alerts import Alert, apply_rollback_policy
    from monitoring.config import load_monitoring_config
    from registry.stages import ModelRegistry

    config = tmp_path / "towerops.yaml"
    config.write_text(yaml.safe_dump({
        "registry": {"model_name": "team_tt", "gate": {"absolute": {"ndcg_at_10": 0.42}, "relative": {}}},
        "audit": {"url": f"sqlite:///{tmp_path / 'audit.db'}"},
        "deployment": {"supabase": {"auto_deployment": False}}}))
    monkeypatch.setenv("TOWEROPS_CONFIG", str(config))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("TOWEROPS_AUDIT_DB_URL", raising=False)
    seen = {}

    def rollback(self, to_version=None, reason=None, actor=None, trigger="cli"):
        seen.update(name=self.name, gate=self.config.gate.absolute, audit=self.audit.url, trigger=trigger)
        return "rolled back"

    monkeypatch.setattr(ModelRegistry, "rollback", rollback)
    cfg = load_monitoring_config(None, {"rollback": {"enabled": True, "on_alerts": ["like_rate_drop"],
                                                     "model_name": "team_tt"}})
    fired = [Alert("like_rate_drop", "like_rate_drop", 0.3, ">", 0.1, "error")]
    assert apply_rollback_policy(fired, cfg) == "rolled back"
    assert seen == {"name": "team_tt", "gate": {"ndcg_at_10": 0.42}, "audit": f"sqlite:///{tmp_path / 'audit.db'}",
                    "trigger": "monitoring"}

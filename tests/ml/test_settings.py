"""The TOWEROPS_* settings (ml/settings.py): one model for every variable, read when asked,
bad values named with the fix, secrets never shown, every variable documented in README."""

from __future__ import annotations

import re

import pytest
from support.helpers import REPO_ROOT

from ml.settings import ENV_PREFIX, Settings, SettingsError, get_settings

CODE = ("ml", "registry", "monitoring", "pipelines")
NOT_SETTINGS = {"TOWEROPS_DATA_DSN"}  # only an example name of an env:VAR reference (ml.secrets)


def _env_names() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def _code_names() -> set[str]:
    found = set()
    for package in CODE:
        for path in (REPO_ROOT / package).rglob("*.py"):
            found |= set(re.findall(r"TOWEROPS_[A-Z0-9_]*[A-Z0-9]", path.read_text(encoding="utf-8")))
    return found


def test_the_environment_is_read_at_call_time(monkeypatch) -> None:
    monkeypatch.delenv("TOWEROPS_CLUSTER_WAIT_S", raising=False)
    assert get_settings().cluster_wait_s == 120.0
    monkeypatch.setenv("TOWEROPS_CLUSTER_WAIT_S", "7.5")
    assert get_settings().cluster_wait_s == 7.5
    monkeypatch.setenv("TOWEROPS_CLUSTER_WAIT_S", "")  # empty = unset
    assert get_settings().cluster_wait_s == 120.0


def test_a_given_mapping_is_read_alone(monkeypatch) -> None:
    monkeypatch.setenv("TOWEROPS_SCORING", "ann")
    child = get_settings({"TOWEROPS_SCORING": "EXACT ", "TOWEROPS_LOWRANK": "off", "PATH": "/bin"})
    assert (child.scoring, child.lowrank, child.model_version) == ("exact", False, None)
    assert get_settings().scoring == "ann"


@pytest.mark.parametrize(("var", "value", "message"), [
    ("TOWEROPS_PREDICTION_LOG_SAMPLE", "abc",
     "TOWEROPS_PREDICTION_LOG_SAMPLE='abc' is not a number; set a fraction between 0 and 1, e.g. 0.1"),
    ("TOWEROPS_PREDICTION_LOG_SAMPLE", "1.5", "TOWEROPS_PREDICTION_LOG_SAMPLE='1.5' is outside [0, 1]"),
    ("TOWEROPS_CLUSTER_WAIT_S", "soon", "TOWEROPS_CLUSTER_WAIT_S='soon' must be a number"),
    ("TOWEROPS_TRACKING_RECOVERY_S", "-1", "TOWEROPS_TRACKING_RECOVERY_S='-1' must be >= 0.0"),
    ("TOWEROPS_SCORING", "fast", "TOWEROPS_SCORING='fast' is not one of auto, exact, ann"),
    ("TOWEROPS_LOWRANK", "maybe", "TOWEROPS_LOWRANK='maybe' must be auto, on or off"),
    ("TOWEROPS_DEPLOY_BACKEND", "ftp", "TOWEROPS_DEPLOY_BACKEND='ftp' is unknown: use one of auto, local, supabase, s3"),
    ("TOWEROPS_LOG_LEVEL", "loud", "TOWEROPS_LOG_LEVEL='loud' is not a log level: use DEBUG, INFO, WARNING or ERROR"),
])
def test_a_bad_value_names_the_variable_and_the_fix(monkeypatch, var: str, value: str, message: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as caught:
        get_settings()
    assert message in str(caught.value)
    assert "unset the variable to use the default" in str(caught.value)


def test_the_prediction_logger_reports_a_bad_sample_rate_by_name(monkeypatch, tmp_path) -> None:
    from ml.inference.prediction_log import PredictionLogger, sample_rate_from_env

    monkeypatch.setenv("TOWEROPS_PREDICTION_LOG_SAMPLE", "0.25")
    monkeypatch.setenv("TOWEROPS_PREDICTION_LOG", str(tmp_path / "p.jsonl"))
    logger = PredictionLogger()
    assert (logger.sample_rate, logger.path) == (0.25, tmp_path / "p.jsonl")
    with pytest.raises(ValueError, match=r"TOWEROPS_PREDICTION_LOG_SAMPLE='x' is not a number"):
        sample_rate_from_env("x")
    monkeypatch.setenv("TOWEROPS_PREDICTION_LOG_SAMPLE", "abc")
    with pytest.raises(ValueError, match=r"TOWEROPS_PREDICTION_LOG_SAMPLE='abc' is not a number"):
        PredictionLogger()


def test_secrets_never_print(monkeypatch) -> None:
    secrets = {"TOWEROPS_WEBHOOK_SECRET": "hunter2-webhook", "TOWEROPS_AUDIT_DB_URL": "postgresql://u:pw-audit@h/db",
               "TOWEROPS_DEPLOY_DSN": "postgresql://u:pw-deploy@h/db", "TOWEROPS_ALERT_WEBHOOK_URL": "https://h/tok-alert"}
    for var, value in secrets.items():
        monkeypatch.setenv(var, value)
    settings = get_settings()
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    assert not any(value in shown for value in secrets.values())
    assert settings.webhook_secret.get_secret_value() == "hunter2-webhook"
    secret_fields = {n for n, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}
    assert {"webhook_secret", "webhook_encryption_key", "audit_db_url", "deploy_dsn", "batch_dsn", "tracking_dsn",
            "auth_dsn", "alert_webhook_url"} <= secret_fields


def test_every_towerops_variable_in_the_code_is_a_setting() -> None:
    missing = _code_names() - _env_names() - NOT_SETTINGS
    assert not missing, f"add these to ml.settings.Settings (and README's table): {sorted(missing)}"


def test_the_code_reads_towerops_variables_only_through_the_settings() -> None:
    direct = re.compile(r"""(environ\.get\(|getenv\(|environ\[)\s*["']TOWEROPS_""")
    allowed = {REPO_ROOT / "ml" / "settings.py",
               REPO_ROOT / "ml" / "logs.py"}  # ml.logs sits beside ml.settings in the import layers
    offenders = [f"{path.relative_to(REPO_ROOT)}:{n}" for package in CODE for path in (REPO_ROOT / package).rglob("*.py")
                 if path not in allowed
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if direct.search(line)]
    assert offenders == []


def test_readme_lists_every_variable() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(TOWEROPS_[A-Z0-9_]+)`", section))
    assert _env_names() - listed == set()
    assert listed - _env_names() - NOT_SETTINGS == set()
    for other in ("MLFLOW_TRACKING_URI", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_DB_URL",
                  "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        assert f"`{other}`" in section

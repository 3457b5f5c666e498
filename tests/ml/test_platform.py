"""The platform config (ml/platform.py): found the same way from any folder, sections inline or
in their own files, relative paths relative to towerops.yaml, secrets only as env:VAR, the
environment over the file; `towerops config show` says where each value came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("TOWEROPS_CONFIG", "MLFLOW_TRACKING_URI", "TOWEROPS_AUDIT_DB_URL", "TOWEROPS_AUDIT_ALLOW_LOCAL",
                "TOWEROPS_DEPLOY_CONFIG", "TOWEROPS_DEPLOY_BACKEND", "TOWEROPS_DEPLOY_DIR"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def _write(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def test_found_by_flag_then_env_then_parents_then_packaged_defaults(clean_env, tmp_path) -> None:
    from ml.platform import find_config_file

    team = _write(tmp_path / "team" / "towerops.yaml", {"tracking": {"uri": "http://mlflow.team:5000"}})
    deep = tmp_path / "team" / "a" / "b"
    deep.mkdir(parents=True)
    other = _write(tmp_path / "other.yaml", {})
    clean_env.chdir(deep)
    assert find_config_file() == (team.resolve(), f"found from {deep.resolve()}")       # a parent's towerops.yaml
    clean_env.setenv("TOWEROPS_CONFIG", str(other))
    assert find_config_file() == (other.resolve(), "$TOWEROPS_CONFIG")                   # the environment wins
    assert find_config_file(team) == (team.resolve(), "--config")                       # the flag wins over both
    clean_env.delenv("TOWEROPS_CONFIG")
    clean_env.chdir(tmp_path)
    assert find_config_file() == (None, "packaged defaults")
    clean_env.setenv("TOWEROPS_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match=r"missing.yaml \(\$TOWEROPS_CONFIG\) does not exist"):
        find_config_file()


def test_sections_inline_or_in_files_with_paths_relative_to_the_config(clean_env, tmp_path) -> None:
    from ml.platform import data_source, section, tracking_uri
    from registry.deploy.config import load_deploy_config
    from registry.gate import load_registry_config

    root = tmp_path / "team"
    _write(root / "configs" / "registry.yaml", {"model_name": "tt_team", "gate": {"absolute": {"ndcg_at_10": 0.3}}})
    cfg = _write(root / "towerops.yaml", {
        "tracking": {"uri": "sqlite:///state/mlflow.db"}, "data": {"source": "data/current", "sources": {"old": "/x/y"}},
        "registry": "configs/registry.yaml", "deployment": {"storage": {"backend": "local", "local_dir": "deploys"}}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    clean_env.chdir(elsewhere)
    clean_env.setenv("TOWEROPS_CONFIG", str(cfg))
    assert tracking_uri().value == f"sqlite:///{root.resolve() / 'state' / 'mlflow.db'}"  # not ./state in the cwd
    assert data_source() == str(root.resolve() / "data" / "current")
    assert data_source("@old") == "/x/y" and data_source("mine") == str(elsewhere.resolve() / "mine")
    with pytest.raises(ValueError, match="no data source named 'new'.*has old"):
        data_source("@new")
    registry = load_registry_config(None)
    assert (registry.model_name, registry.gate.absolute) == ("tt_team", {"ndcg_at_10": 0.3})
    assert section("registry").source.startswith(str((root / "configs" / "registry.yaml").resolve()))
    assert load_deploy_config(None).local_dir == str(root.resolve() / "deploys")
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://other:5000")                          # the environment wins
    assert tracking_uri().value == "http://other:5000" and tracking_uri().source == "env MLFLOW_TRACKING_URI"


def test_secrets_in_the_file_and_unknown_sections_are_refused(clean_env, tmp_path) -> None:
    from ml.config import ConfigError
    from ml.platform import load_platform, platform_section

    cfg = _write(tmp_path / "towerops.yaml", {"audit": {"url": "postgresql://team:hunter2-pw@db:5432/audit"}})
    clean_env.setenv("TOWEROPS_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match="audit.url.*holds a password.*env:VAR") as caught:
        platform_section("audit")
    assert "hunter2-pw" not in str(caught.value)
    _write(cfg, {"webhooks": {"secret": "plain-secret-value"}})
    with pytest.raises(ConfigError, match="webhooks.secret.*must be env:VAR"):
        platform_section("webhooks")
    _write(cfg, {"registy": {}})
    with pytest.raises(ValueError, match="unknown section.*'registy' \\(did you mean 'registry'\\?\\)"):
        load_platform()


def test_webhook_secret_is_read_from_the_variable_the_config_names(clean_env, tmp_path) -> None:
    from ml.platform import webhook_secret

    clean_env.setenv("TOWEROPS_CONFIG", str(_write(tmp_path / "towerops.yaml",
                                                  {"webhooks": {"secret": "env:TEAM_HOOK_SECRET"}})))
    clean_env.setenv("TEAM_HOOK_SECRET", "s3cr3t-team-hook")
    assert webhook_secret() == "s3cr3t-team-hook"
    clean_env.delenv("TEAM_HOOK_SECRET")
    with pytest.raises(ValueError, match="TEAM_HOOK_SECRET"):
        webhook_secret()


def test_a_remote_tracking_server_refuses_a_local_audit_file_unless_allowed(clean_env, tmp_path) -> None:
    from registry.audit import AuditLog, LocalAuditError, audit_url

    cfg = _write(tmp_path / "towerops.yaml", {"tracking": {"uri": "http://mlflow.team:5000"}})
    clean_env.setenv("TOWEROPS_CONFIG", str(cfg))
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://mlflow.team:5000")
    url = audit_url()
    assert url == f"sqlite:///{tmp_path.resolve() / 'towerops_audit.db'}"              # never ./ of the cwd
    log = AuditLog(url)
    with pytest.raises(LocalAuditError, match="audit trail is the local file.*audit.url.*--allow-local-audit"):
        with log.locked("tt"):
            pass
    clean_env.setenv("TOWEROPS_AUDIT_ALLOW_LOCAL", "true")                                # told explicitly
    with log.locked("tt"):
        pass
    clean_env.delenv("TOWEROPS_AUDIT_ALLOW_LOCAL")
    _write(cfg, {"tracking": {"uri": "http://mlflow.team:5000"}, "audit": {"allow_local": True}})
    with log.locked("tt"):
        pass


def test_config_show_names_each_source_and_masks_secrets(clean_env, tmp_path) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    cfg = _write(tmp_path / "towerops.yaml", {
        "tracking": {"uri": "http://mlflow.team:5000"}, "audit": {"url": "env:TEAM_AUDIT_DSN"},
        "registry": {"gate": {"absolute": {"ndcg_at_10": 0.2}}}})
    clean_env.setenv("TEAM_AUDIT_DSN", "postgresql://team:hunter2-pw@db:5432/audit")
    clean_env.setenv("TOWEROPS_DEPLOY_BACKEND", "local")
    clean_env.chdir(tmp_path)
    out = CliRunner().invoke(app, ["--config", str(cfg), "config", "show", "--format", "json"])
    assert out.exit_code == 0, out.output
    assert "hunter2-pw" not in out.output
    shown = json.loads(out.stdout)
    assert shown["file"] == str(cfg.resolve()) and shown["found"] == "--config"
    src, values = shown["sources"], shown["config"]
    assert values["tracking"]["uri"] == "http://mlflow.team:5000" and src["tracking.uri"] == str(cfg.resolve())
    assert values["audit"]["url"] == "env:TEAM_AUDIT_DSN (set)" and src["audit.url"] == str(cfg.resolve())
    assert values["registry"]["gate"]["absolute"] == {"ndcg_at_10": 0.2}
    assert src["registry.gate.absolute.ndcg_at_10"] == str(cfg.resolve())
    assert src["registry.model_name"] == "default" and values["registry"]["model_name"] == "two_tower"
    assert src["deployment.storage.backend"] == "env TOWEROPS_DEPLOY_BACKEND"
    assert values["webhooks"]["secret"].startswith("env:TOWEROPS_WEBHOOK_SECRET")


def test_every_section_of_the_repository_config_is_valid(clean_env) -> None:
    """The checkout's towerops.yaml, from a subfolder: every section validates and equals the packaged defaults."""
    from support.helpers import REPO_ROOT

    from pipelines.platform import effective_config

    clean_env.chdir(REPO_ROOT / "ml")
    repo = effective_config()
    assert repo.platform.path == REPO_ROOT / "towerops.yaml" and repo.errors == {}
    clean_env.chdir(Path("/"))
    packaged = effective_config()
    assert packaged.platform.path is None and packaged.errors == {}
    for name in ("training", "tuning", "registry", "monitoring"):
        assert repo.values[name] == packaged.values[name], name

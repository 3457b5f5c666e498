"""What a person (or a log file) gets from `towerops` outside a terminal: no progress-bar
frames, no ANSI codes, no TensorFlow start-up lines, one line per validation error, tables in
full, `--format json`, "not computed" instead of NaN, and a loud error for an unusable log folder.

The command functions are plain typed functions (pipelines/cli_*.py): the table and JSON
tests call them directly."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from support.helpers import REPO_ROOT, mlflow_env

ANSI = re.compile(r"\x1b\[")
TF_START_UP = ("cuInit", "cudart_stub", "absl::InitializeLog", "oneDNN", "cpu_feature_guard",
               "rebuild TensorFlow with the appropriate compiler flags")


def _towerops(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """The installed `towerops` script (else `python -m pipelines.cli`), stdout and stderr on pipes."""
    script = Path(sys.executable).parent / "towerops"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "pipelines.cli"]
    return subprocess.run([*argv, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = mlflow_env(tmp_path, **extra)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # towerops must quiet TensorFlow itself
    for key in ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "FORCE_COLOR", "TOWEROPS_LOG_LEVEL"):
        env.pop(key, None)
    return env


@pytest.mark.slow
def test_train_in_a_pipe_prints_no_progress_bars_ansi_codes_or_tensorflow_start_up_lines(
        tmp_path: Path, tiny_data_dir: Path) -> None:
    # from a folder outside the repository with no config at all: the packaged defaults (the seed's towers)
    proc = _towerops("train", "--data", str(tiny_data_dir), "--model-dir", str(tmp_path / "model"),
                     "--set", "training.epochs=1", env=_env(tmp_path), cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "\r" not in output and "Downloading artifacts" not in output  # MLflow's tqdm frames
    assert not ANSI.search(output), [line for line in output.splitlines() if ANSI.search(line)][:3]
    noisy = [line for line in output.splitlines() if any(marker in line for marker in TF_START_UP)]
    assert noisy == []
    finished = [line for line in proc.stderr.splitlines() if "FINISHED" in line]
    assert len(finished) == 1 and "bundle " in finished[0]  # one line, not cut at 80 columns
    for log_file in (tmp_path / "logs").glob("*.log"):
        assert not ANSI.search(log_file.read_text()), log_file
    assert "epoch 1/1" in (tmp_path / "logs" / "training.log").read_text()
    model = json.loads((tmp_path / "model" / "config.json").read_text())["model"]   # the packaged defaults ran
    assert (model["item_embedding_dim"], model["hidden_units"]) == (768, [512, 256, 128])


def test_each_validation_problem_is_printed_once_on_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "users.csv").write_text("user_id,age\nu1,3\n")
    (bad / "items.csv").write_text("item_id,title\ni1,x\n")
    (bad / "interactions.csv").write_text("user_id,item_id\nu1,i1\n")
    proc = _towerops("data", "validate", str(bad), env=_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    problems = [line for line in proc.stderr.splitlines() if re.match(r"^\d+\. \[", line)]
    assert problems, proc.stderr
    assert all("; fix: " in line for line in problems)  # the fix on the same line
    assert len(problems) == len(set(problems))
    for line in problems:
        assert proc.stderr.count(line) == 1
    assert len(re.findall(r"\d+ problems? in the input data", proc.stderr)) == 1  # the header, once
    assert "input data rejected" in (tmp_path / "logs" / "training.log").read_text()  # the file keeps it


def test_a_log_folder_that_is_a_file_stops_the_command_with_the_path_and_the_fix(tmp_path: Path) -> None:
    target = tmp_path / "logs-file"
    target.write_text("")
    proc = _towerops("data", "validate", str(tmp_path), env=_env(tmp_path, TOWEROPS_LOG_DIR=str(target)), cwd=tmp_path)
    assert proc.returncode == 2
    assert f"log folder {target} (TOWEROPS_LOG_DIR) is a file" in proc.stderr
    assert "set TOWEROPS_LOG_DIR to a folder this user can write" in proc.stderr


def test_an_unwritable_log_folder_stops_the_command_with_the_path_and_the_fix(tmp_path: Path) -> None:
    folder = Path("/sys") if os.geteuid() == 0 else tmp_path / "read-only"
    if folder != Path("/sys"):
        folder.mkdir()
        folder.chmod(0o500)
    proc = _towerops("data", "validate", str(tmp_path), env=_env(tmp_path, TOWEROPS_LOG_DIR=str(folder)), cwd=tmp_path)
    assert proc.returncode == 2
    assert f"log folder {folder} (TOWEROPS_LOG_DIR) is not usable" in proc.stderr


# ------------------------------------------------------------------ tables and --format json
class _FakeRegistry:
    name = "two_tower"

    def status(self) -> list[dict]:
        return [{"version": "3", "semver": "v1.2.0", "stage": "production", "aliases": "production",
                 "ndcg_at_10": float("nan"), "run_id": "r" * 32, "created": "2026-12-01 10:00"}]

    def history(self, limit: int) -> list:
        from registry.audit import AuditEntry

        return [AuditEntry(model_name="two_tower", version="3", action="promote", to_stage="production",
                           reason="a long reason " * 30, created_at=datetime(2026, 12, 1, 10, 0), trigger="cli")]


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.cli_registry as cli_registry

    monkeypatch.setattr(cli_registry, "_open", lambda *a, **k: _FakeRegistry())


def test_a_table_is_printed_in_full_when_stdout_is_not_a_terminal(fake_registry: None, capsys) -> None:
    from pipelines.cli_registry import history_cmd

    history_cmd()
    out = capsys.readouterr().out
    assert ("a long reason " * 30).strip() in out  # one cell, not cut or wrapped at 80 columns
    assert "\x1b" not in out


def test_format_json_prints_the_rows_with_nan_as_null(fake_registry: None, capsys) -> None:
    from pipelines.cli_registry import status_cmd
    from pipelines.common import OutputFormat

    status_cmd(fmt=OutputFormat.json)
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["version"] == "3" and rows[0]["ndcg_at_10"] is None


def test_cli_errors_exit_2_with_one_message(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import pipelines.cli_registry as cli_registry

    def refuse(*a, **k):
        raise FileNotFoundError("registry config nowhere.yaml does not exist")

    monkeypatch.setattr(cli_registry, "_open", refuse)
    with pytest.raises(typer.Exit) as exit_info:
        cli_registry.status_cmd(config="nowhere.yaml")
    assert exit_info.value.exit_code == 2
    assert capsys.readouterr().err.count("registry config nowhere.yaml does not exist") == 1


def test_comparison_lines_say_not_computed_instead_of_nan() -> None:
    from pipelines.cli_evaluate import comparison_lines

    nan = float("nan")
    lines = comparison_lines([
        {"metric": "ndcg_at_10", "champion": 0.25, "challenger": 0.3, "delta": 0.05, "ci_low": 0.01, "ci_high": 0.09,
         "winner": "challenger"},
        {"metric": "auc", "champion": nan, "challenger": 0.7, "delta": nan, "ci_low": nan, "ci_high": nan,
         "winner": "tie"}])
    assert lines[0].split()[:4] == ["ndcg_at_10", "0.2500", "0.3000", "+0.0500"] and "[+0.0100, +0.0900]" in lines[0]
    assert "nan" not in " ".join(lines).lower()
    assert "n/c" in lines[1] and "(no CI: no paired users)" in lines[1]
    assert lines[-1].startswith("(n/c: not computed")


def test_monitor_metrics_say_not_computed_instead_of_nan(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import monitoring.run
    from pipelines.cli_monitor import monitor_run_cmd

    result = SimpleNamespace(run_id="abc", model_uri="models:/two_tower@production", alerts=[], exit_code=0,
                             metrics={"item_drift_share": 0.125, "online_like_rate": float("nan")})
    monkeypatch.setattr(monitoring.run, "monitor_run", lambda *a, **k: result)
    monitor_run_cmd(data=str(REPO_ROOT))
    out = capsys.readouterr().out
    assert "item_drift_share" in out and "0.1250" in out
    assert "online_like_rate" in out and "not computed (no data for it in this window)" in out
    assert "nan" not in out

"""ml/logs.py: nothing bound at import, files bound by configure_logging, loud log-folder
failures, no ANSI codes in files, TensorFlow start-up lines filtered, "not computed" for NaN."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from support.helpers import REPO_ROOT

from ml import logs


@pytest.fixture
def fresh_logs(tmp_path: Path):
    """configure_logging into tmp_path/logs; the session's configuration is restored afterwards."""
    session_dir = logs._state["dir"]
    yield tmp_path / "logs"
    logs.configure_logging(directory=session_dir)


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this user cannot create files in (root may write anywhere but /sys)."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def test_importing_the_code_base_binds_no_file_and_creates_no_log_folder(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TOWEROPS_LOG_DIR"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    code = ("import logging, pipelines.cli, monitoring.run, registry.service, ml.inference.batch.run, "
            "ml.tracking.training\n"
            "bound = [n for n, l in logging.root.manager.loggerDict.items() if n.startswith('towerops') "
            "and getattr(l, 'handlers', None)]\n"
            "print(bound)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
    assert not (tmp_path / "logs").exists()


def test_configure_logging_binds_the_stage_files_in_the_given_folder(fresh_logs: Path) -> None:
    logs.configure_logging(directory=fresh_logs)
    logs.get_logger("deployment").info("uploaded v1")
    logs.get_logger("a_new_stage").debug("detail")
    for handler in logging.getLogger("towerops.deployment").handlers + logging.getLogger("towerops.a_new_stage").handlers:
        handler.flush()
    assert "uploaded v1" in (fresh_logs / "deployment.log").read_text()
    assert "detail" in (fresh_logs / "a_new_stage.log").read_text()
    assert not (fresh_logs / "training.log").exists()  # files appear with their first record


def test_configure_logging_again_rebinds_to_the_new_folder(fresh_logs: Path, tmp_path: Path) -> None:
    logs.configure_logging(directory=fresh_logs)
    logs.configure_logging(directory=tmp_path / "other")
    logs.get_logger("training").info("where am I")
    for handler in logging.getLogger("towerops.training").handlers:
        handler.flush()
    assert "where am I" in (tmp_path / "other" / "training.log").read_text()
    assert not (fresh_logs / "training.log").exists()
    assert len([h for h in logging.getLogger("towerops.training").handlers if isinstance(h, logging.FileHandler)]) == 1


def test_a_log_folder_that_is_a_file_is_an_error_naming_it_and_the_fix(tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    with pytest.raises(logs.LogDirError) as info:
        logs.check_log_dir(target)
    assert str(target) in str(info.value) and "is a file" in str(info.value)
    assert "set TOWEROPS_LOG_DIR to a folder this user can write" in str(info.value)


def test_an_unwritable_log_folder_is_an_error_naming_it_and_the_fix(tmp_path: Path) -> None:
    folder = _unwritable_folder(tmp_path)
    with pytest.raises(logs.LogDirError) as info:
        logs.check_log_dir(folder)
    assert str(folder) in str(info.value) and "not usable" in str(info.value)
    assert "TOWEROPS_LOG_DIR" in str(info.value)


def test_a_bad_log_level_is_an_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOWEROPS_LOG_LEVEL", "loud")
    with pytest.raises(ValueError, match="TOWEROPS_LOG_LEVEL='LOUD' is not a log level"):
        logs.console_level()


def test_log_files_hold_no_ansi_codes_from_our_messages_or_library_warnings(fresh_logs: Path) -> None:
    logs.configure_logging(directory=fresh_logs)
    logs.get_logger("training").warning("\x1b[1;33mcoloured\x1b[0m message")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = logging._showwarning  # what captureWarnings installs (pytest replaces it per test)
        warnings.warn("\x1b[31mlibrary warning\x1b[0m", UserWarning, stacklevel=1)
    for handler in logging.root.handlers + logging.getLogger("towerops.training").handlers:
        handler.flush()
    training = (fresh_logs / "training.log").read_text()
    libraries = (fresh_logs / "libraries.log").read_text()
    assert "coloured message" in training and "library warning" in libraries
    assert "\x1b" not in training and "\x1b" not in libraries


def test_file_only_records_skip_the_console_but_reach_the_file(fresh_logs: Path, capsys: pytest.CaptureFixture) -> None:
    logs.configure_logging(directory=fresh_logs)
    log = logs.get_logger("training")
    log.error("shown by the caller", extra=logs.FILE_ONLY)
    log.error("shown here")
    err = capsys.readouterr().err
    assert "shown here" in err and "shown by the caller" not in err
    for handler in log.handlers:
        handler.flush()
    assert "shown by the caller" in (fresh_logs / "training.log").read_text()


def test_tensorflow_start_up_lines_on_stderr_go_to_the_library_log_and_the_rest_stays(
        fresh_logs: Path, capfd: pytest.CaptureFixture) -> None:
    logs.configure_logging(directory=fresh_logs)
    with logs._tensorflow_import_filter():  # what wraps `import tensorflow` unless --verbose
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1796168202.354175   17517 cudart_stub.cc:31] Could not find cuda drivers\n")
        os.write(2, b"E0000 00:00:1796168219.930593   17517 cuda_platform.cc:52] failed call to cuInit: 303\n")
        os.write(2, b"2024-01-01 12:00:00.123: I tensorflow/core/util/port.cc:113] oneDNN custom operations are on.\n")
        os.write(2, b"Traceback: something real\n")
    err = capfd.readouterr().err
    assert err == "Traceback: something real\n"
    for handler in logging.getLogger("towerops.libraries").handlers:
        handler.flush()
    library = (fresh_logs / "libraries.log").read_text()
    assert "cuInit" in library and "oneDNN" in library and "cudart_stub" in library


def test_metric_text_says_not_computed_and_why_instead_of_nan() -> None:
    assert logs.metric_text(0.123456) == "0.1235"
    assert logs.metric_text(float("nan"), why="no baselines requested") == "not computed (no baselines requested)"
    assert logs.metric_text(None) == "not computed"
    assert logs.metric_text(float("inf"), "+.2f") == "not computed"

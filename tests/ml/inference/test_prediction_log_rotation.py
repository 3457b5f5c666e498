"""logs/predictions.jsonl rotates by size: predictions.1.jsonl (newest) .. .<backups>.jsonl, the
oldest dropped; several processes rotate it once; monitoring reads the rotated files too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.helpers import REPO_ROOT

from ml.inference.prediction_log import PredictionLogger, rotated_path


def _write(logger: PredictionLogger, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        logger.write(logger.record(user_id=f"u{i:05d}", cold=False, top_k=1, items=["i1"], scores=[0.5],
                                   latency_ms=1.0, ts="2026-11-03T12:00:00.000Z"))


def _users(path: Path) -> list[str]:
    return [json.loads(line)["user_id"] for line in path.read_text().splitlines()] if path.exists() else []


def test_the_log_rotates_at_max_bytes_and_keeps_only_the_newest_backups(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    logger = PredictionLogger(path, max_bytes=1000, backups=2)
    line_bytes = len(json.dumps(logger.record(user_id="u00000", cold=False, top_k=1, items=["i1"], scores=[0.5],
                                              latency_ms=1.0, ts="2026-11-03T12:00:00.000Z"),
                                separators=(",", ":")).encode()) + 1
    per_file = 1000 // line_bytes  # whole lines that fit under the limit
    _write(logger, 4 * per_file)  # four files' worth: the first one rotates out past 2 backups

    files = [path, rotated_path(path, 1), rotated_path(path, 2)]
    assert [f.name for f in files] == ["predictions.jsonl", "predictions.1.jsonl", "predictions.2.jsonl"]
    assert not rotated_path(path, 3).exists()
    assert all(f.stat().st_size <= 1000 for f in files)
    expected = [f"u{i:05d}" for i in range(per_file, 4 * per_file)]  # the oldest per_file lines were dropped
    assert _users(files[2]) + _users(files[1]) + _users(files[0]) == expected


def test_max_bytes_zero_never_rotates(tmp_path: Path) -> None:
    logger = PredictionLogger(tmp_path / "p.jsonl", max_bytes=0)
    _write(logger, 50)
    assert len(_users(tmp_path / "p.jsonl")) == 50 and not rotated_path(tmp_path / "p.jsonl", 1).exists()


def test_rotation_settings_come_from_the_environment_and_bad_values_name_the_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOWEROPS_PREDICTION_LOG_MAX_BYTES", "4096")
    monkeypatch.setenv("TOWEROPS_PREDICTION_LOG_BACKUPS", "3")
    logger = PredictionLogger(tmp_path / "p.jsonl")
    assert (logger.max_bytes, logger.backups) == (4096, 3)
    monkeypatch.setenv("TOWEROPS_PREDICTION_LOG_MAX_BYTES", "10MB")
    with pytest.raises(ValueError, match="TOWEROPS_PREDICTION_LOG_MAX_BYTES='10MB' must be an integer"):
        PredictionLogger(tmp_path / "p.jsonl")
    monkeypatch.setenv("TOWEROPS_PREDICTION_LOG_MAX_BYTES", "4096")
    monkeypatch.setenv("TOWEROPS_PREDICTION_LOG_BACKUPS", "0")
    with pytest.raises(ValueError, match="TOWEROPS_PREDICTION_LOG_BACKUPS='0' must be >= 1"):
        PredictionLogger(tmp_path / "p.jsonl")


def test_monitoring_reads_the_rotated_files_of_a_log_folder(tmp_path: Path) -> None:
    from monitoring.prediction_log import read_prediction_log

    logger = PredictionLogger(tmp_path / "predictions.jsonl", max_bytes=600, backups=50)  # nothing dropped
    _write(logger, 40)
    assert rotated_path(tmp_path / "predictions.jsonl", 2).exists()
    frame = read_prediction_log(tmp_path)
    assert sorted(frame["user_id"]) == [f"u{i:05d}" for i in range(40)]


_WRITER = """
import sys
from ml.inference.prediction_log import PredictionLogger
logger = PredictionLogger(sys.argv[1], max_bytes=2000, backups=500)
for i in range(int(sys.argv[3])):
    logger.write(logger.record(user_id=f"{sys.argv[2]}-{i}", cold=False, top_k=1, items=["i1"], scores=[0.5],
                               latency_ms=1.0, ts="2026-11-03T12:00:00.000Z"))
"""


def test_writers_in_several_processes_rotate_without_losing_a_line(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"w{w}", "400"], cwd=REPO_ROOT)
             for w in range(3)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    files = [path, *sorted(tmp_path.glob("predictions.*.jsonl"))]
    assert len(files) > 10  # it did rotate, many times
    seen = [u for f in files for u in _users(f)]
    assert sorted(seen) == sorted(f"w{w}-{i}" for w in range(3) for i in range(400))

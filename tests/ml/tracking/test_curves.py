"""Training curves drawn by a child process while the run logs the rest, and in process when the child fails."""

from __future__ import annotations

import logging

import pytest

HISTORY = {"loss": [1.0, 0.8, 0.7], "val_loss": [1.1, 0.9, 0.95], "auc": [0.6, 0.7, 0.72],
           "health_dead_unit_share.user_tower_dense_0": [0.0, 0.0, 0.01]}


def _is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_come_from_the_child_process(tmp_path, caplog) -> None:
    from ml.tracking.training import CurvesInBackground

    curves = CurvesInBackground(HISTORY, tmp_path)
    assert curves.child is not None
    with caplog.at_level(logging.WARNING, logger="towerops"):
        path = curves.result()
    assert curves.child.returncode == 0 and _is_png(path)
    assert not [r for r in caplog.records if "training curves" in r.getMessage()]


@pytest.mark.parametrize("child", ["import sys; sys.exit(3)", "import time; time.sleep(30)"])
def test_a_failed_or_stuck_child_falls_back_to_drawing_in_process(child, tmp_path, caplog, monkeypatch) -> None:
    import ml.tracking.training as training

    monkeypatch.setattr(training, "_PLOT_CHILD", child)
    curves = training.CurvesInBackground(HISTORY, tmp_path)
    with caplog.at_level(logging.WARNING, logger="towerops"):
        path = curves.result(timeout=2.0)
    assert _is_png(path)                                  # the artifact is there either way
    warnings = [r.getMessage() for r in caplog.records if "training curves" in r.getMessage()]
    assert len(warnings) == 1 and "drawing them in process" in warnings[0]
    assert curves.child.poll() is not None                # no child left behind

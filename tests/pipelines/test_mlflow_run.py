"""MLproject entry points run with `mlflow run` into tmp_path (SQLite tracking). The `main` chain and
the other entry points, with their exit codes, are in test_main_chain.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from support.helpers import REPO_ROOT, mlflow_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _mlflow_run(tmp_path: Path, entry: str, params: dict[str, object], experiment: str = "e2e") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO_ROOT), "-e", entry, "--env-manager", "local",
           "--experiment-name", experiment]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    return subprocess.run(cmd, cwd=tmp_path, env=mlflow_env(tmp_path), capture_output=True, text=True, timeout=900)


def _client(tmp_path: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_env(tmp_path)["MLFLOW_TRACKING_URI"])


def test_train_entry_point_with_overrides(tmp_path: Path, tiny_synth) -> None:
    from ml.data.synthetic import write_synthetic

    write_synthetic(tiny_synth, tmp_path / "data")
    proc = _mlflow_run(tmp_path, "train", {"data": tmp_path / "data", "epochs": 1, "embedding_dim": 16,
                                           "hidden_units": "[32,16]", "model_dir": tmp_path / "m"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _client(tmp_path).search_runs([_client(tmp_path).get_experiment_by_name("e2e").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.item_embedding_dim"] == "16" and run.data.params["model.hidden_units"] == "[32, 16]"
    assert run.data.params["training.epochs"] == "1"


def test_bad_data_fails_clearly_and_leaves_no_finished_run(tmp_path: Path, tiny_synth) -> None:
    from ml.data.synthetic import write_synthetic

    write_synthetic(tiny_synth, tmp_path / "data")
    items = pd.read_csv(tmp_path / "data" / "items.csv", dtype=str)
    items.loc[3, "item_id"] = items.loc[2, "item_id"]          # duplicate id
    items.loc[5, "price"] = "cheap"                            # wrong type
    items.to_csv(tmp_path / "data" / "items.csv", index=False)

    proc = _mlflow_run(tmp_path, "train", {"data": tmp_path / "data", "epochs": 1})
    assert proc.returncode != 0
    assert "items.csv" in proc.stderr and "item_id" in proc.stderr and "price" in proc.stderr
    client = _client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert runs and all(r.info.status == "FAILED" for r in runs)

    # the CLI exits 2 with the same report and starts no run at all
    env = mlflow_env(tmp_path)
    cli = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", "--data", str(tmp_path / "data")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 2 and "duplicate" in cli.stderr.lower()
    assert len(client.search_runs([client.get_experiment_by_name("e2e").experiment_id])) == len(runs)

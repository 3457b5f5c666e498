"""`mlflow run . -e evaluate` as a user types it: typed parameters, the run it creates, its failure mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.helpers import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _mlflow_run(args: list[str], tracking_uri: str, cwd: Path) -> subprocess.CompletedProcess:
    """`mlflow run` from `cwd` (a tmp folder): the experiment's artifact root (./mlruns) is created there."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(var, None)
    return subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO_ROOT), "--env-manager", "local",
                           "--experiment-name", "e2e-evaluate", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_evaluate_entry_point(tiny_synth, tiny_model_dir, tmp_path):
    import mlflow

    from ml.data.synthetic import write_synthetic

    data = tmp_path / "data"
    write_synthetic(tiny_synth, data)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ok = _mlflow_run(["-e", "evaluate", "-P", f"model={tiny_model_dir}", "-P", f"data={data}", "-P", "ks=5,10"], uri, tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("e2e-evaluate")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert {"ndcg_at_5", "popular.ndcg_at_10", "lift_over_popular.ndcg_at_10", "oracle_ratio.ndcg_at_10"} <= set(run.data.metrics)

    bad = _mlflow_run(["-e", "evaluate", "-P", "model=runs:/0123456789abcdef/recommender", "-P", f"data={data}"], uri, tmp_path)
    assert bad.returncode != 0
    assert "does not exist or cannot be read" in bad.stderr + bad.stdout
    failed = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_id != run.info.run_id]
    assert [r.info.status for r in failed] == ["FAILED"] and not failed[0].data.metrics

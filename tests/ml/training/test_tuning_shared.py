"""`towerops tune --storage postgresql://...`: workers on several hosts share one Optuna study.

Two real worker processes on loopback, one PostgreSQL database for the study (created
here, dropped after) and one `mlflow server` on PostgreSQL for tracking. Worker A starts
first with a tiny time budget, so it runs exactly one trial (the enqueued seed point);
worker B joins while or after that trial runs and fills the study up to its n_trials
total. Checked: the count is the study's (4, not 4 per worker), the seed point runs once,
every trial is a nested run of one parent found by the study tag, the parent stays RUNNING
while a worker is still at the study and only the last one ends it FINISHED, the last worker
logs the best of all trials, and the storage password reaches no log, param, tag or artifact.

A worker killed mid-trial: its trial keeps no heartbeat, the next worker fails it as stale
(and its MLflow run FAILED), it stops counting, and the study still gets n_trials COMPLETE.
A worker stopping on an error leaves the parent RUNNING while another worker runs a trial.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from support.helpers import REPO_ROOT

PASSWORD = "tune-s3cret-pw"  # trust auth ignores it; it must still never be recorded
BASE = {
    "model": {"user_embedding_dim": 8, "item_embedding_dim": 8, "hidden_units": [16], "dropout_rate": 0.0,
              "l2_regularization": 0.0001},
    "training": {"batch_size": 64, "epochs": 1, "patience": 1, "seed": 7, "learning_rate": 0.005},
    "features": {"text_dim": 8},
}
POINT = {"learning_rate": 0.01, "batch_size": 64}
SPEC = {
    "n_trials": 4,
    "trial_epochs": 1,
    "sampler": {"type": "random", "seed": 3},
    "pruner": {"type": "none"},
    "search_space": {"learning_rate": {"low": 1.0e-3, "high": 2.0e-2, "log": True},
                     "batch_size": {"choices": [32, 64]}},
    "enqueue_trials": [POINT],
}


@pytest.fixture
def optuna_db(pg_admin_dsn: str):
    """A throwaway database for the study, its URL with a (dummy) password."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg2

    name = f"towerops_optuna_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(pg_admin_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(pg_admin_dsn)
    netloc = f"{parts.username or 'postgres'}:{PASSWORD}@{parts.hostname}:{parts.port or 5432}"
    try:
        yield urlunsplit(parts._replace(netloc=netloc, path=f"/{name}"))
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def _worker(tmp: Path, name: str, env: dict, storage: str, data: Path, *extra: str, study: str = "shared-test"
            ) -> tuple[subprocess.Popen, Path]:
    out = tmp / name
    out.mkdir()
    log = open(out / "stdout.txt", "wb")
    argv = [sys.executable, "-m", "pipelines.cli", "tune", "--data", str(data), "--tuning", str(tmp / "tuning.yaml"),
            "--config", str(tmp / "base.json"), "--out", str(out / "best.json"), "--storage", storage,
            "--study-name", study, "--run-name", f"tune-{name}", *extra]
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env={**env, "TOWEROPS_LOG_DIR": str(out / "logs")}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return proc, out


def _wait(proc: subprocess.Popen, out: Path, timeout: float = 400) -> str:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    text = (out / "stdout.txt").read_text(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    return text


@pytest.mark.integration
@pytest.mark.slow
def test_two_workers_share_one_study_and_one_parent_run(tmp_path: Path, mlflow_server, optuna_db: str) -> None:
    import optuna
    from mlflow import MlflowClient

    from ml.data.synthetic import generate_synthetic, write_synthetic
    from ml.tracking.tuning import sqlalchemy_url

    data = tmp_path / "data"
    write_synthetic(generate_synthetic(n_users=80, n_items=60, n_interactions=1000, seed=5), data)
    (tmp_path / "tuning.yaml").write_text(yaml.safe_dump(SPEC))
    (tmp_path / "base.json").write_text(json.dumps(BASE))
    env = mlflow_server.client_env(MLFLOW_EXPERIMENT_NAME="shared-tune")

    # A: a budget shorter than one trial, so it runs one trial and stops starting more
    proc_a, out_a = _worker(tmp_path, "a", env, optuna_db, data, "--timeout", "0.5")
    storage = optuna.storages.RDBStorage(sqlalchemy_url(optuna_db))
    deadline = time.time() + 300
    while proc_a.poll() is None and time.time() < deadline:  # B starts once A holds a trial
        try:
            if optuna.load_study(study_name="shared-test", storage=storage).trials:
                break
        except KeyError:
            pass
        time.sleep(0.5)
    proc_b, out_b = _worker(tmp_path, "b", env, optuna_db, data)
    client = MlflowClient(tracking_uri=mlflow_server.url)

    # A is done while B still runs trials: A leaves the shared parent RUNNING; B, the last, ends it
    text_a = _wait(proc_a, out_a)
    assert proc_b.poll() is None, "B must still run trials when A exits"
    (parent_then,) = _study_parents(client, "shared-test", "shared-tune")
    assert parent_then.info.status == "RUNNING", text_a[-3000:]
    assert f"run {parent_then.info.run_id} RUNNING (the study is not complete" in " ".join(text_a.split())
    text_b = _wait(proc_b, out_b)
    assert f"run {parent_then.info.run_id} FINISHED:" in " ".join(text_b.split())

    study = optuna.load_study(study_name="shared-test", storage=storage)
    trials = study.trials
    assert [t.number for t in trials] == [0, 1, 2, 3]  # the study's total, not n_trials per worker
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    workers = [t.user_attrs["towerops.worker"] for t in trials]
    assert len(set(workers)) == 2 and workers.count(workers[0]) == 1  # A ran trial 0 only, B the other three
    seed_runs = [t for t in trials if t.params == {"learning_rate": 0.01, "batch_size": 64}]
    assert [t.number for t in seed_runs] == [0]  # enqueued once, by the worker that created the study

    exp = client.get_experiment_by_name("shared-tune")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("towerops.study") == "shared-test"]
    assert len(parents) == 1, [r.data.tags for r in runs]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.params["optuna.trial"]) for r in children) == [0, 1, 2, 3]
    assert len(runs) == 5  # one parent, four trials: no second parent from the joining worker
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in children}

    # the last worker to finish logged the best of all four trials on the parent; B saw them all
    best = study.best_trial
    assert parent.data.tags["towerops.best_trial"] == str(best.number)
    assert parent.data.metrics["best_val_ndcg_at_10"] == pytest.approx(best.value)
    assert parent.data.metrics["n_trials_complete"] == 4
    best_b = json.loads((out_b / "best.json").read_text())
    assert best_b["training"]["learning_rate"] == pytest.approx(best.params["learning_rate"])
    assert parent.data.params["tune.study_name"] == "shared-test"
    assert "***" in parent.data.params["tune.storage"]

    # the storage password: in no output, log file, param, tag or artifact
    recorded = [text_a, text_b, *(p.read_text(errors="replace") for o in (out_a, out_b)
                                  for p in (o / "logs").rglob("*") if p.is_file())]
    for run in runs:
        recorded += [json.dumps(run.data.params), json.dumps(run.data.tags)]
    recorded.append((Path(client.download_artifacts(parent.info.run_id, "tuning.json", str(tmp_path)))).read_text())
    assert not [r for r in recorded if PASSWORD in r]


def _study_parents(client, study: str, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("towerops.study") == study]


def _heartbeats(storage) -> dict[int, float]:
    """trial_id -> seconds since its last heartbeat, by the database's clock (Optuna's trial_heartbeats)."""
    from sqlalchemy import text

    with storage.engine.connect() as conn:
        rows = conn.execute(text("SELECT trial_id, EXTRACT(EPOCH FROM (LOCALTIMESTAMP - heartbeat)) "
                                 "FROM trial_heartbeats")).all()
    return {int(t): float(age) for t, age in rows}


def _freeze_in_a_trial(proc: subprocess.Popen, storage, study: str, deadline_s: float = 240) -> int:
    """Stop `proc` (SIGSTOP) at a moment it runs a trial that has a heartbeat and an MLflow run, then
    SIGKILL it: a worker that dies mid-trial. Returns that trial's number."""
    import optuna

    deadline = time.time() + deadline_s
    while time.time() < deadline:
        assert proc.poll() is None, "the worker exited before it could be killed mid-trial"
        try:
            loaded = optuna.load_study(study_name=study, storage=storage)
        except KeyError:
            time.sleep(0.2)
            continue
        if any(t.state == optuna.trial.TrialState.RUNNING for t in loaded.get_trials(deepcopy=False)):
            os.kill(proc.pid, signal.SIGSTOP)  # frozen: nothing changes while we look
            beats = _heartbeats(storage)
            running = [t for t in loaded.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                       if t._trial_id in beats and "mlflow_run_id" in t.user_attrs]
            if running:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
                return running[0].number
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.1)
    raise AssertionError(f"no RUNNING trial with a heartbeat within {deadline_s}s (heartbeats not recorded?)")


@pytest.mark.integration
@pytest.mark.slow
def test_a_dead_workers_trial_is_failed_as_stale_and_the_study_still_completes(tmp_path: Path, mlflow_server,
                                                                               optuna_db: str) -> None:
    import optuna
    from mlflow import MlflowClient

    from ml.data.synthetic import generate_synthetic, write_synthetic
    from ml.tracking.tuning import sqlalchemy_url

    data = tmp_path / "data"
    write_synthetic(generate_synthetic(n_users=80, n_items=60, n_interactions=1000, seed=5), data)
    grace = 3
    (tmp_path / "tuning.yaml").write_text(yaml.safe_dump({**SPEC, "n_trials": 3, "heartbeat_interval_s": 1,
                                                          "grace_period_s": grace}))
    (tmp_path / "base.json").write_text(json.dumps(BASE))
    env = mlflow_server.client_env(MLFLOW_EXPERIMENT_NAME="stale-tune")
    storage = optuna.storages.RDBStorage(sqlalchemy_url(optuna_db))
    client = MlflowClient(tracking_uri=mlflow_server.url)

    proc_a, out_a = _worker(tmp_path, "a", env, optuna_db, data, study="stale-test")
    dead = _freeze_in_a_trial(proc_a, storage, "stale-test")
    study = optuna.load_study(study_name="stale-test", storage=storage)
    trial = study.trials[dead]
    assert trial.state == optuna.trial.TrialState.RUNNING  # nobody told it: it would count forever
    dead_run = trial.user_attrs["mlflow_run_id"]
    assert client.get_run(dead_run).info.status == "RUNNING"
    (parent,) = _study_parents(client, "stale-test", "stale-tune")
    assert parent.info.status == "RUNNING"  # A never got to end it
    deadline = time.time() + 60  # B starts once the trial is stale by the database's clock
    while _heartbeats(storage)[trial._trial_id] <= grace + 0.5 and time.time() < deadline:
        time.sleep(0.25)

    proc_b, out_b = _worker(tmp_path, "b", env, optuna_db, data, study="stale-test")
    text_b = _wait(proc_b, out_b)

    study = optuna.load_study(study_name="stale-test", storage=storage)
    states = [t.state for t in study.trials]
    assert states[dead] == optuna.trial.TrialState.FAIL, states
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3, states  # n_trials complete despite the dead one
    assert optuna.trial.TrialState.RUNNING not in states and len(states) == 4, states
    assert f"trial {dead} of " in text_b and "had no heartbeat for 3s" in text_b
    run = client.get_run(dead_run)
    assert run.info.status == "FAILED" and run.data.tags["towerops.trial_state"] == "FAIL"
    assert "failed as stale" in run.data.tags["towerops.failure"]
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_trials_complete"] == 3
    assert parent.data.metrics["n_trials_fail"] == 1
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.info.status for r in children) == ["FAILED", "FINISHED", "FINISHED", "FINISHED"]


@pytest.mark.parametrize("other_worker_busy", [True, False])
def test_a_worker_stopping_on_an_error_never_finishes_the_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  other_worker_busy: bool) -> None:
    """The error leaves the parent RUNNING while another worker runs a trial (it ends it), else FAILED."""
    import optuna
    from mlflow import MlflowClient

    import ml.tracking.tuning as tuning
    from ml.data.synthetic import generate_synthetic, write_synthetic

    data = tmp_path / "data"
    write_synthetic(generate_synthetic(n_users=80, n_items=60, n_interactions=1000, seed=5), data)
    (tmp_path / "tuning.yaml").write_text(yaml.safe_dump(SPEC))
    (tmp_path / "base.json").write_text(json.dumps(BASE))
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    storage_url = f"sqlite:///{tmp_path / 'optuna.db'}"

    def broken_trial(st, trial):
        if other_worker_busy:  # another worker holds a live trial of the study meanwhile
            other = optuna.storages.RDBStorage(storage_url)
            other_trial = optuna.load_study(study_name="err-test", storage=other).ask()
            other.record_heartbeat(other_trial._trial_id)
        raise RuntimeError("the GPU fell off")

    monkeypatch.setattr(tuning, "_run_trial", broken_trial)
    with pytest.raises(RuntimeError, match="the GPU fell off"):
        tuning.run_tuning(str(data), tmp_path / "tuning.yaml", tmp_path / "base.json", out=tmp_path / "best.json",
                          experiment="err-tune", storage=storage_url, study_name="err-test")
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    (parent,) = _study_parents(client, "err-test", "err-tune")
    assert parent.info.status == ("RUNNING" if other_worker_busy else "FAILED")


def test_study_name_without_storage_and_a_literal_password_in_the_file_are_refused(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ml.training.tuning import tuning_spec_from_dict
    from pipelines.cli import app

    with pytest.raises(ValueError, match="storage holds a password") as err:
        tuning_spec_from_dict({**SPEC, "storage": f"postgresql://u:{PASSWORD}@db/optuna"}, "tuning.yaml")
    assert PASSWORD not in str(err.value)
    assert tuning_spec_from_dict({**SPEC, "storage": "env:TOWEROPS_TUNING_STORAGE"}).storage == \
        "env:TOWEROPS_TUNING_STORAGE"
    (tmp_path / "tuning.yaml").write_text(yaml.safe_dump(SPEC))
    (tmp_path / "base.json").write_text(json.dumps(BASE))
    result = CliRunner().invoke(app, ["tune", "--data", str(tmp_path / "nowhere"), "--tuning",
                                      str(tmp_path / "tuning.yaml"), "--config", str(tmp_path / "base.json"),
                                      "--study-name", "x"])
    assert result.exit_code == 2 and "needs a shared storage" in " ".join(result.output.split()), result.output

"""Hyperparameter search (ml/tuning.py, `towerops tune`, `mlflow run . -e tune`).

Fast tests: every bad tuning file fails with a message naming the setting, before any
MLflow run. Slow tests: a tiny real study (3 trials, 2 epochs, a forced bad trial that the
median pruner stops), and the entry points: `-e tune` writes best_config.json, which
`-e train -P config=...` trains as is.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.helpers import REPO_ROOT, mlflow_env
from typer.testing import CliRunner

from ml.config import config_from_dict, load_config
from ml.training.tuning import apply_params, load_tuning_spec, tuning_spec_from_dict, validate_space

BASE = {
    "model": {"user_embedding_dim": 16, "item_embedding_dim": 16, "hidden_units": [32], "dropout_rate": 0.0,
              "l2_regularization": 0.0001},
    "training": {"batch_size": 64, "epochs": 2, "patience": 2, "seed": 7, "learning_rate": 0.005},
    "features": {"text_dim": 8},
}
SPEC = {
    "n_trials": 3,
    "trial_epochs": 2,
    "objective": {"metric": "val_ndcg_at_10"},
    "sampler": {"type": "tpe", "seed": 1},
    "pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    "search_space": {
        "learning_rate": {"low": 1.0e-6, "high": 1.0e-2, "log": True},
        "batch_size": {"choices": [32, 64]},
        "dropout_rate": {"low": 0.0, "high": 0.3},
        "l2_regularization": {"low": 1.0e-6, "high": 1.0e-3, "log": True},
        "hidden_units": {"choices": [[32], [32, 16]]},
        "temperature": {"low": 0.05, "high": 0.3, "log": True},
    },
    # a good point, then a hopeless one (learning rate 1e-6) the median pruner must stop
    "enqueue_trials": [
        {"learning_rate": 0.01, "batch_size": 64, "dropout_rate": 0.0, "l2_regularization": 1.0e-4,
         "hidden_units": [32], "temperature": 0.1},
        {"learning_rate": 1.0e-6, "batch_size": 64, "dropout_rate": 0.0, "l2_regularization": 1.0e-4,
         "hidden_units": [32], "temperature": 0.1},
    ],
}


def _spec(**changes) -> dict:
    spec = copy.deepcopy(SPEC)
    for dotted, value in changes.items():
        node = spec
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return spec


def _validate(spec: dict) -> None:
    validate_space(tuning_spec_from_dict(spec, "tuning.yaml"), config_from_dict(BASE))


def test_shipped_tuning_file_is_valid_for_the_shipped_config() -> None:
    spec = load_tuning_spec(REPO_ROOT / "configs" / "tuning.yaml")
    validate_space(spec, load_config(REPO_ROOT / "configs" / "training.json"))
    assert {p.name for p in spec.space} == {"learning_rate", "batch_size", "dropout_rate", "l2_regularization",
                                            "hidden_units", "temperature", "logq_weight", "history_dropout"}
    # the shipped file and the built-in default space (no search_space given) search the same ranges
    from ml.training.tuning import DEFAULT_SPACE, SEED_POINT

    assert {p.name: p.to_dict() for p in spec.space} == {p.name: p.to_dict() for p in tuning_spec_from_dict({}).space}
    assert set(DEFAULT_SPACE) == set(SEED_POINT) and list(spec.enqueue) == [SEED_POINT]
    assert spec.direction == "maximize" and spec.ranking_k == 10 and spec.pruner == "median"
    assert load_tuning_spec(REPO_ROOT / "configs" / "tuning.yaml", n_trials=4, timeout_s=60.0).n_trials == 4


@pytest.mark.parametrize(("changes", "message"), [
    ({"search_space__batch_size": {"choices": []}}, r"search_space.batch_size.choices is empty"),
    ({"search_space__hidden_units": {"choices": []}}, r"search_space.hidden_units.choices is empty"),
    ({"search_space__learning_rate": {"low": 0.1, "high": 0.001, "log": True}}, r"low=0.1 is above high=0.001"),
    ({"search_space__temperature": {"low": 0.0, "high": 0.3, "log": True}}, r"a log range needs low > 0"),
    ({"search_space__momentum": {"low": 0.1, "high": 0.9}}, r"'momentum' cannot be searched"),
    ({"search_space__dropout_rate": {"low": 0.1}}, r"needs low and high"),
    ({"search_space__hidden_units": {"choices": [[32], "wide"]}}, r"'wide' must be a non-empty list of integers"),
    ({"search_space": {}}, r"search_space is missing or empty"),
    ({"objective__metric": "val_fun"}, r"objective.metric='val_fun' is unknown: use val_recall_at_K"),
    ({"pruner__type": "hyperband"}, r"pruner.type='hyperband' is unknown"),
    ({"n_trials": 0}, r"n_trials=0 must be >= 1"),
    ({"timeout_s": -5}, r"timeout_s=-5.0 must be > 0"),
    ({"epochs": 3}, r"unknown key epochs: did you mean 'trial_epochs'\? allowed keys: enqueue_trials"),
    ({"enqueue_trials": [{"learning_rate": 0.5}]}, r"learning_rate=0.5 is outside search_space.learning_rate"),
    ({"heartbeat_interval_s": 30, "grace_period_s": 20}, r"grace_period_s=20 must be above heartbeat_interval_s=30"),
])
def test_bad_tuning_settings_are_named(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _validate(_spec(**changes))


@pytest.mark.parametrize(("changes", "message"), [
    # every point rejected by the config's own validation: the space has no valid point
    ({"search_space__dropout_rate": {"low": 1.0, "high": 1.5}}, r"search_space.dropout_rate \(\[1, 1.5\]\) has no "
                                                                r"valid point: 1.0: model.dropout_rate=1.0 must be"),
    ({"search_space__batch_size": {"choices": [1]}}, r"search_space.batch_size .* has no valid point: 1: "
                                                     r"training.batch_size=1 must be >= 2"),
    ({"search_space__hidden_units": {"choices": [[0], [-4, 2]]}}, r"search_space.hidden_units .* has no valid point"),
    # partly rejected: trials would fail mid-search
    ({"search_space__dropout_rate": {"low": 0.5, "high": 1.0}}, r"search_space.dropout_rate .* includes rejected "
                                                                r"values: 1.0: .*narrow the range"),
])
def test_search_space_is_checked_against_the_config(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _validate(_spec(enqueue_trials=None, **changes))


def test_apply_params_sets_config_keys_and_keeps_the_rest() -> None:
    base = config_from_dict(BASE)
    cfg = apply_params(base, {"learning_rate": 0.02, "hidden_units": [64, 32], "temperature": 0.2, "batch_size": 32},
                       epochs=5)
    assert cfg.training.learning_rate == 0.02 and cfg.model.hidden_units == [64, 32]
    assert cfg.model.temperature == 0.2 and cfg.training.batch_size == 32 and cfg.training.epochs == 5
    assert cfg.features.text_dim == 8 and cfg.model.user_embedding_dim == 16 and base.training.learning_rate == 0.005
    ids = apply_params(base, {"logq_weight": 0.7, "history_dropout": 0.25, "id_dropout": 0.2, "id_embedding_dim": 8})
    assert (ids.model.logq_weight, ids.model.history_dropout, ids.model.id_dropout, ids.model.id_embedding_dim) == \
        (0.7, 0.25, 0.2, 8)


def _runs(db: Path) -> list:
    if not db.exists():
        return []
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.fixture(scope="module")
def tune_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ml.data.synthetic import generate_synthetic, write_synthetic

    out = tmp_path_factory.mktemp("tune_data")
    write_synthetic(generate_synthetic(n_users=120, n_items=80, n_interactions=1500, seed=3), out)
    return out


def _write(tmp_path: Path, spec: dict, base: dict = BASE) -> tuple[Path, Path]:
    (tmp_path / "tuning.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "base.json").write_text(json.dumps(base))
    return tmp_path / "tuning.yaml", tmp_path / "base.json"


@pytest.mark.parametrize(("spec", "base", "message"), [
    (_spec(enqueue_trials=None, search_space__dropout_rate={"low": 1.0, "high": 1.2}), BASE, "has no valid point"),
    (_spec(search_space__batch_size={"choices": []}), BASE, "choices is empty"),
    (SPEC, {**BASE, "training": {**BASE["training"], "distribute_strategy": "multi_worker_mirrored"}},
     "trials run in one process"),
    (SPEC, {**BASE, "training": {**BASE["training"], "distribute_strategy": "gpu_farm"}}, "is unknown"),
])
def test_tune_command_fails_before_any_run(tmp_path: Path, tune_data: Path, monkeypatch: pytest.MonkeyPatch,
                                           spec: dict, base: dict, message: str) -> None:
    from pipelines.cli import app

    tuning, base_path = _write(tmp_path, spec, base)
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    result = CliRunner().invoke(app, ["tune", "--data", str(tune_data), "--tuning", str(tuning), "--config",
                                      str(base_path), "--out", str(tmp_path / "best.json")])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in " ".join(result.output.split())
    assert _runs(db) == [] and not (tmp_path / "best.json").exists()


def test_tune_command_rejects_bad_numbers(tmp_path: Path, tune_data: Path) -> None:
    from pipelines.cli import app

    tuning, base_path = _write(tmp_path, SPEC)
    result = CliRunner().invoke(app, ["tune", "--data", str(tune_data), "--tuning", str(tuning), "--config",
                                      str(base_path), "--n-trials", "2.5"])
    assert result.exit_code == 2 and "--n-trials='2.5' must be a whole number >= 1" in result.output


@pytest.mark.slow
def test_study_prunes_the_bad_trial_nests_runs_and_writes_best_config(tmp_path: Path, tune_data: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from ml.tracking.tuning import run_tuning

    tuning, base_path = _write(tmp_path, SPEC)
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    out = tmp_path / "best_config.json"
    result = run_tuning(str(tune_data), tuning, base_path, out=out, experiment="tune-test")

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("tune-test").experiment_id])
    parent = next(r for r in runs if r.info.run_id == result.run_id)
    trials = sorted((r for r in runs if r.info.run_id != result.run_id), key=lambda r: int(r.data.params["optuna.trial"]))
    assert parent.info.status == "FINISHED" and parent.data.tags["towerops.step"] == "tune"
    assert len(trials) == 3 and all(t.data.tags["mlflow.parentRunId"] == result.run_id for t in trials)
    assert all(t.info.status == "FINISHED" for t in trials)

    good, bad = trials[0], trials[1]
    assert good.data.params["training.learning_rate"] == "0.01" and good.data.tags["towerops.trial_state"] == "COMPLETE"
    assert bad.data.params["training.learning_rate"] == "1e-06" and bad.data.tags["towerops.trial_state"] == "PRUNED"
    # per-epoch objective on the trial runs; the pruned one stopped after its first epoch
    assert [m.step for m in client.get_metric_history(good.info.run_id, "val_ndcg_at_10")] == [0, 1]
    assert [m.step for m in client.get_metric_history(bad.info.run_id, "val_ndcg_at_10")] == [0]
    first_good = client.get_metric_history(good.info.run_id, "val_ndcg_at_10")[0].value
    first_bad = client.get_metric_history(bad.info.run_id, "val_ndcg_at_10")[0].value
    assert first_bad < first_good
    assert parent.data.metrics["n_trials_pruned"] >= 1 and parent.data.metrics["n_trials_complete"] >= 1
    assert result.states.get("pruned", 0) >= 1

    # best params on the parent; best_config.json is the base with them set, in the seed's format
    assert parent.data.metrics["best_val_ndcg_at_10"] == pytest.approx(result.best_value)
    best_trial = next(t for t in trials if t.info.run_id == result.best_run_id)
    assert best_trial.data.metrics["objective"] == pytest.approx(result.best_value)
    for name, value in result.best_params.items():
        assert parent.data.params[f"best.{name}"] == (json.dumps(value) if isinstance(value, list) else str(value))
    written = json.loads(out.read_text())
    assert set(written) == {"model", "training", "features", "data"}
    loaded = load_config(out)
    assert loaded.to_dict() == apply_params(config_from_dict(BASE), result.best_params).to_dict()
    assert loaded.training.epochs == BASE["training"]["epochs"]
    artifact = Path(client.download_artifacts(result.run_id, "best_config.json", str(tmp_path)))
    assert json.loads(artifact.read_text()) == written
    assert {"tuning.json", "base_config.json", "best_config.json", "trials.csv"} <= {
        a.path for a in client.list_artifacts(result.run_id)}


def _mlflow_run(cwd: Path, entry: str, params: dict[str, object]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO_ROOT), "-e", entry, "--env-manager", "local",
           "--experiment-name", "tune-e2e"]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    return subprocess.run(cmd, cwd=cwd, env=mlflow_env(cwd), capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.e2e
def test_tune_entry_point_best_config_trains_with_the_train_entry_point(tmp_path: Path, tune_data: Path) -> None:
    from mlflow import MlflowClient

    spec = _spec(n_trials=2, enqueue_trials=None)
    tuning, base_path = _write(tmp_path, spec)
    out = tmp_path / "best_config.json"
    proc = _mlflow_run(tmp_path, "tune", {"data": tune_data, "tuning": tuning, "config": base_path, "out": out,
                                          "n_trials": 1})
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = load_config(out)  # the seed's format, valid as is

    proc = _mlflow_run(tmp_path, "train", {"data": tune_data, "config": out, "epochs": 1,
                                           "model_dir": tmp_path / "model"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=mlflow_env(tmp_path)["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("tune-e2e").experiment_id])
    steps = {r.data.tags.get("towerops.step") for r in runs}
    assert steps == {"tune", "tune-trial", "train"}
    assert sum(r.data.tags.get("towerops.step") == "tune-trial" for r in runs) == 1  # -P n_trials=1 overrides the file
    train = next(r for r in runs if r.data.tags.get("towerops.step") == "train")
    assert train.info.status == "FINISHED"
    p = train.data.params
    assert float(p["training.learning_rate"]) == pytest.approx(best.training.learning_rate)
    assert float(p["model.temperature"]) == pytest.approx(best.model.temperature)
    assert p["model.hidden_units"] == json.dumps(best.model.hidden_units)
    assert int(p["training.batch_size"]) == best.training.batch_size and p["training.epochs"] == "1"
    assert (tmp_path / "model" / "metadata.json").exists()

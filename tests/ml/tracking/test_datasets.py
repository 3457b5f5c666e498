"""A training run's data, location-free (ml/tracking/datasets.py): the MLflow dataset input has
an absolute source without password and the content hash; the evaluation set artifact comes
back through the tracking store with exactly the split training made; a changed artifact is
refused."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture
def tracked(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield tmp_path
    mlflow.set_tracking_uri("")


def test_the_run_logs_an_absolute_source_and_the_exact_split(tracked, tiny_synth) -> None:
    import mlflow

    from ml.data.fingerprint import dataset_fingerprint
    from ml.data.loaders import load_folder, write_folder
    from ml.data.split import time_split_per_user
    from ml.tracking.datasets import SPLIT_COLUMN, eval_set_uri, load_eval_set, log_training_data

    write_folder(tiny_synth.dataset, tracked / "data")
    dataset = load_folder("data")                                   # relative, as a user types it
    fingerprint = dataset_fingerprint(dataset)
    mlflow.set_experiment("datasets")
    with mlflow.start_run() as run:
        log_training_data(dataset, "data", fingerprint, validation_split=0.2, test_split=0.1)
    got = mlflow.MlflowClient().get_run(run.info.run_id)
    (inp,) = got.inputs.dataset_inputs
    source = json.loads(inp.dataset.source)
    assert source["kind"] == "folder" and source["uri"] == str((tracked / "data").resolve())
    assert inp.dataset.digest == fingerprint["hash"][:32]
    assert {t.key: t.value for t in inp.tags}["towerops.data_hash"] == fingerprint["hash"]
    assert got.data.tags["towerops.data_source"] == str((tracked / "data").resolve())

    evalset = load_eval_set(eval_set_uri(run.info.run_id))
    split = time_split_per_user(dataset.interactions, 0.2, 0.1)
    assert (evalset.split == "test").sum() == split.test.sum() > 0
    assert np.array_equal(evalset.split == "test", split.test) and np.array_equal(evalset.split == "valid", split.valid)
    assert evalset.shares == {"validation_split": 0.2, "test_split": 0.1}
    assert SPLIT_COLUMN not in evalset.dataset.interactions.columns
    assert evalset.dataset.interactions["item_id"].tolist() == dataset.interactions["item_id"].tolist()
    assert evalset.dataset.items["tags"].map(type).eq(list).all()    # Parquet arrays back as lists
    assert evalset.dataset.sources["interactions"].startswith(f"runs:/{run.info.run_id}/evaluation/test_set")


def test_a_dsn_is_recorded_without_its_password(tiny_synth, monkeypatch) -> None:
    from ml.tracking.datasets import describe_data_source

    monkeypatch.setenv("TEAM_DATA_DSN", "postgresql://reader:s3cret-pw@db.team:5432/app")
    for given in ("postgresql://reader:s3cret-pw@db.team:5432/app", "env:TEAM_DATA_DSN"):
        source = describe_data_source(tiny_synth.dataset, given)
        assert source["kind"] == "postgresql" and source["uri"] == "postgresql://reader@db.team:5432/app"
        assert "s3cret-pw" not in json.dumps(source)
    assert describe_data_source(tiny_synth.dataset, "env:TEAM_DATA_DSN")["reference"] == "env:TEAM_DATA_DSN"


def test_a_changed_evaluation_set_is_refused(tiny_synth, tmp_path) -> None:
    import pandas as pd

    from ml.tracking.datasets import read_eval_set, write_eval_set

    meta = write_eval_set(tiny_synth.dataset, 0.2, 0.1, tmp_path / "set")
    assert read_eval_set(tmp_path / "set").hash == meta["hash"]
    inter = pd.read_parquet(tmp_path / "set" / "interactions.parquet")
    inter.loc[0, "label"] = 1 - inter.loc[0, "label"]
    inter.to_parquet(tmp_path / "set" / "interactions.parquet", index=False)
    with pytest.raises(ValueError, match="differs from the hash recorded at training"):
        read_eval_set(tmp_path / "set")
    (tmp_path / "set" / "split.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing split.json"):
        read_eval_set(tmp_path / "set")

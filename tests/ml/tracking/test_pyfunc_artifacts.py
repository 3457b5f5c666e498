"""The logged pyfunc carries the bundle as plain files, without the fit's training-only checkpoint."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def test_pyfunc_artifacts_are_the_bundle_without_its_checkpoint(tiny_model_dir: Path, tmp_path, monkeypatch) -> None:
    import mlflow

    from ml.tracking.runs import set_experiment
    from ml.tracking.training import log_recommender

    assert (tiny_model_dir / "checkpoints").is_dir()  # what the trainer leaves in the bundle folder
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    set_experiment("pyfunc-artifacts", uri)
    with mlflow.start_run():
        info = log_recommender(tiny_model_dir)

    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "got")))
    bundle = next(p for p in (local / "artifacts").iterdir() if p.is_dir())
    names = {p.name for p in bundle.iterdir()}
    assert names == {p.name for p in tiny_model_dir.iterdir()} - {"checkpoints"}
    files = [p for p in bundle.rglob("*")]
    assert files and not any(p.is_symlink() for p in files)           # copies, not links into the bundle folder
    sizes = {p.relative_to(bundle): p.stat().st_size for p in files if p.is_file()}
    assert sizes == {p.relative_to(tiny_model_dir): p.stat().st_size for p in tiny_model_dir.rglob("*")
                     if p.is_file() and "checkpoints" not in p.relative_to(tiny_model_dir).parts}

    model = mlflow.pyfunc.load_model(info.model_uri)                   # and it serves from those copies
    user = str(pd.read_json(tiny_model_dir / "users" / "user_ids.json").iloc[0, 0]) \
        if (tiny_model_dir / "users" / "user_ids.json").exists() else None
    out = model.predict(pd.DataFrame({"user_id": [user], "top_k": [3.0]}) if user else
                        pd.DataFrame({"liked_items": [[]], "top_k": [3.0]}))
    assert len(out) == 3

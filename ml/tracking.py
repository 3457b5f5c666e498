"""Training as an MLflow run: params, per-epoch metrics, data fingerprint, artifacts,
training curves and the pyfunc recommender.

Everything that can fail on bad input (config, data) is checked before the run
starts, so a bad call never leaves a FINISHED run behind; an exception inside the
run marks it FAILED.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from ml.logs import get_logger

log = get_logger("training")

DEFAULT_EXPERIMENT = "towerops"
PYFUNC_NAME = "recommender"
REPO_ROOT = Path(__file__).resolve().parents[1]


def ensure_tracking_uri() -> str:
    """Use $MLFLOW_TRACKING_URI, else the embedded default: SQLite `mlflow.db` + local `mlruns/`."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = f"sqlite:///{Path('mlflow.db').resolve()}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    return uri


def start_run(run_name: str | None = None, experiment: str | None = None, nested: bool = False, tags: Mapping[str, str] | None = None):
    """`mlflow.start_run` that joins the run `mlflow run` created (MLFLOW_RUN_ID) when there is one."""
    import mlflow

    ensure_tracking_uri()
    if not mlflow.active_run() and not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
    if nested and mlflow.active_run():
        return mlflow.start_run(run_name=run_name, nested=True, tags=dict(tags or {}))
    return mlflow.start_run(run_name=run_name, tags=dict(tags or {}))


class TrackingServerUnavailable(ConnectionError):
    """The MLflow tracking server stopped answering during a run (the run is not FINISHED)."""


def tracking_server_reachable(uri: str | None = None, timeout_s: float = 3.0) -> bool:
    """True when the tracking URI is not an HTTP server, or when its /health answers."""
    import requests

    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        return requests.get(uri.rstrip("/") + "/health", timeout=timeout_s).ok
    except requests.RequestException:
        return False


@contextmanager
def guard_tracking_loss(active_run: Any) -> Iterator[Any]:
    """Wrap an `mlflow.start_run(...)` so losing the tracking server ends in a clear error.

    MLflow's client already retries each request (MLFLOW_HTTP_REQUEST_MAX_RETRIES, backoff),
    so a server back within that window is invisible and the run carries on. When a
    request finally fails and /health does not answer, wait up to
    $TOWEROPS_TRACKING_RECOVERY_S (default 120) for the server, mark the run FAILED there,
    and raise TrackingServerUnavailable. If it never comes back, the run is left RUNNING
    on the server (say so, with the command that fixes it) and the client's active-run
    stack is cleared, so MLflow's exit hook cannot later mark it FINISHED.
    """
    run_id = active_run.info.run_id
    try:
        with active_run:
            try:
                yield active_run
            except Exception as exc:
                if tracking_server_reachable():
                    raise
                raise _tracking_lost(run_id, exc) from exc
    except TrackingServerUnavailable:
        raise
    except Exception as exc:  # ending the run failed: the server is (still) gone
        if isinstance(exc.__context__, TrackingServerUnavailable):
            raise exc.__context__ from None
        if tracking_server_reachable():
            raise
        raise TrackingServerUnavailable(_lost_message(run_id, exc, recovered=False)) from exc


def _lost_message(run_id: str, exc: BaseException, recovered: bool) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    reason = " ".join(str(exc).split())[:240]
    if recovered:
        return (f"the MLflow tracking server {uri} stopped answering during run {run_id} ({reason}); "
                "it is back and the run is marked FAILED. Train again.")
    return (f"the MLflow tracking server {uri} stopped answering during run {run_id} ({reason}) and did not come "
            f"back; the run stays RUNNING there until you run `towerops server mark-failed {run_id}` against it.")


def _tracking_lost(run_id: str, exc: BaseException) -> TrackingServerUnavailable:
    """Wait for the server, then let the enclosing `with` mark the run FAILED (or not block on it)."""
    from mlflow import MlflowClient

    deadline = time.time() + float(os.environ.get("TOWEROPS_TRACKING_RECOVERY_S", "120"))
    log.error("tracking server unreachable during run %s; waiting until %s for it to come back to mark the run "
              "FAILED", run_id, time.strftime("%H:%M:%S", time.localtime(deadline)))
    while time.time() < deadline and not tracking_server_reachable():
        time.sleep(1.0)
    if tracking_server_reachable():
        try:
            MlflowClient().set_tag(run_id, "towerops.failure", "tracking server unreachable during training")
        except Exception:  # noqa: BLE001 - the status below matters, the tag is a courtesy
            pass
        log.error("tracking server is back; run %s will be marked FAILED", run_id)
        return TrackingServerUnavailable(_lost_message(run_id, exc, recovered=True))
    # Server still down: end the run locally with one quick attempt, not another retry window.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    log.error("tracking server still unreachable; run %s stays RUNNING on it", run_id)
    return TrackingServerUnavailable(_lost_message(run_id, exc, recovered=False))


def mlflow_epoch_callback(run_id: str):
    """Keras callback logging each epoch's metrics (train and val_) with step=epoch."""
    import keras
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient()

    class _MlflowEpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            now = int(time.time() * 1000)
            metrics = [Metric(k, float(v), now, epoch) for k, v in (logs or {}).items() if isinstance(v, (int, float))]
            if metrics:
                client.log_batch(run_id, metrics=metrics, synchronous=True)

    return _MlflowEpochLogger()


def plot_curves(history: Mapping[str, list[float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k.removeprefix("val_") for k in history})
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for key, style in ((name, "-"), (f"val_{name}", "--")):
            if key in history:
                ax.plot(range(1, len(history[key]) + 1), history[key], style, label=key)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def pyfunc_requirements() -> list[str]:
    from importlib.metadata import version

    pins = []
    for pkg in ("mlflow", "tensorflow", "keras", "pandas", "numpy", "scikit-learn", "scipy", "joblib", "h5py", "faiss-cpu"):
        try:
            pins.append(f"{pkg}=={version(pkg)}")
        except Exception:  # noqa: BLE001
            pins.append(pkg)
    return pins


def log_recommender(model_dir: str | Path, name: str = PYFUNC_NAME, registered_model_name: str | None = None):
    """Log the bundle as an MLflow pyfunc that returns top-k items per user."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    from ml.inference import TwoTowerRecommender

    signature = ModelSignature(
        inputs=Schema([
            ColSpec("string", "user_id", required=False),
            # double, not long: MLflow cannot enforce an int column with a missing value, so a batch
            # where only some rows set top_k would be refused; the pyfunc checks it is a whole number
            ColSpec("double", "top_k", required=False),
            ColSpec("boolean", "exclude_seen", required=False),
            ColSpec(Array("string"), "candidate_items", required=False),
            ColSpec(Array("string"), "liked_items", required=False),
            ColSpec(Array("string"), "noped_items", required=False),
        ]),
        outputs=Schema([ColSpec("string", "user_id"), ColSpec("string", "item_id"),
                        ColSpec("double", "score"), ColSpec("long", "rank")]),
        # output: "rows" (one row per item) or "lists" (one row per request; spark_udf needs it)
        params=ParamSchema([ParamSpec("top_k", "long", 10), ParamSpec("output", "string", "rows")]),
    )
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=TwoTowerRecommender(),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[str(REPO_ROOT / "ml")],
        pip_requirements=pyfunc_requirements(),
        signature=signature,
        registered_model_name=registered_model_name,
    )


@dataclass
class TrainResult:
    run_id: str
    model_uri: str
    model_dir: Path
    history: dict[str, list[float]]
    metrics: dict[str, float] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)


def train_run(
    data: Any,
    config_path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    model_dir: str | Path | None = None,
    run_name: str = "train",
    nested: bool = False,
    experiment: str | None = None,
) -> TrainResult:
    """Validate config and data, then train inside an MLflow run and log everything."""
    import mlflow

    from ml.config import load_config
    from ml.data.fingerprint import dataset_fingerprint
    from ml.data.loaders import load_dataset
    from ml.data.schema import Dataset
    from ml.distribute import global_batch_problem, plan_distribution, start_distribution
    from ml.training import create_standard_trainer

    config = load_config(config_path, overrides)  # bad config: error before any run
    plan = plan_distribution(config)  # bad strategy or TF_CONFIG: same
    dataset = data if isinstance(data, Dataset) else load_dataset(str(data))  # bad data: same
    fingerprint = dataset_fingerprint(dataset)
    distribution = start_distribution(plan)  # waits for the other workers; a missing one: error, no run
    problem = global_batch_problem(config.training.batch_size, distribution.num_replicas)
    if problem:
        raise ValueError(problem)
    if not distribution.is_chief:
        return _train_worker(config, dataset, fingerprint, distribution, model_dir)
    log.info("data %s: %s (sha256 %s)", dataset.sources.get("interactions", "?"), fingerprint["rows"], fingerprint["hash"][:12])
    with guard_tracking_loss(start_run(run_name=run_name, experiment=experiment, nested=nested,
                                       tags={"towerops.step": "train"})) as run:
        run_id = run.info.run_id
        out_dir = Path(model_dir) if model_dir else Path(tempfile.mkdtemp(prefix="towerops-model-"))
        params: dict[str, Any] = {k: json.dumps(v) if isinstance(v, list) else v for k, v in config.flat_params().items()}
        params.update({
            "data.source": str(dataset.sources.get("interactions", "in-memory")),
            "data.hash": fingerprint["hash"],
            **{f"data.rows.{k}": v for k, v in fingerprint["rows"].items()},
        })
        mlflow.log_params(params)
        mlflow.set_tags({"towerops.data_hash": fingerprint["hash"], "towerops.embedding_dim": str(config.embedding_dim),
                         **distribution.tags()})
        mlflow.log_dict(fingerprint, "data_fingerprint.json")
        mlflow.log_dict(config.to_dict(), "config.json")

        trainer = create_standard_trainer(model_dir=out_dir, config=config, callbacks=[mlflow_epoch_callback(run_id)],
                                          distribution=distribution)
        history = trainer.train(dataset=dataset, data_fingerprint=fingerprint)
        metadata = json.loads((out_dir / "metadata.json").read_text())
        mlflow.set_tag("towerops.feature_schema_hash", metadata["feature_schema_hash"])

        best = {f"best_{k}": float(v) for k, v in metadata["final_metrics"].items()}
        best["best_epoch"] = float(trainer.best_epoch if trainer.best_epoch is not None else -1)
        best["epochs_run"] = float(metadata["epochs_run"])
        mlflow.log_metrics(best)

        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(plot_curves(history, Path(tmp) / "training_curves.png")))
        mlflow.log_artifact(str(out_dir / "history.json"))
        mlflow.log_artifact(str(out_dir / "metadata.json"))
        mlflow.log_artifacts(str(out_dir / "preprocessing"), "preprocessing")
        mlflow.log_artifacts(str(out_dir / "keras"), "keras")
        mlflow.log_artifacts(str(out_dir / "saved_model"), "saved_model")
        info = log_recommender(out_dir)
        mlflow.set_tag("towerops.model_uri", info.model_uri)
        log.info("run %s finished: best epoch %s, model %s", run_id, trainer.best_epoch, info.model_uri)
    return TrainResult(run_id=run_id, model_uri=info.model_uri, model_dir=out_dir, history=history, metrics=best,
                       fingerprint=fingerprint)


def _train_worker(config: Any, dataset: Any, fingerprint: dict[str, Any], distribution: Any,
                  model_dir: str | Path | None) -> TrainResult:
    """A non-chief worker of a multi-worker cluster: trains in step with the chief, logs no
    MLflow run and writes no bundle (the trainer checkpoints to a temporary folder)."""
    from ml.training import create_standard_trainer

    if os.environ.get("MLFLOW_RUN_ID"):
        log.warning("MLFLOW_RUN_ID is set on non-chief worker %s: that run gets nothing from this worker (start "
                    "workers with `towerops train`, only the chief through `mlflow run`)", distribution.plan.describe())
    trainer = create_standard_trainer(model_dir=model_dir or "models/two_tower", config=config,
                                      distribution=distribution)
    history = trainer.train(dataset=dataset, data_fingerprint=fingerprint)
    log.info("worker %s finished; the chief logs the run and writes the bundle", distribution.plan.describe())
    return TrainResult(run_id="", model_uri="", model_dir=trainer.model_dir, history=history, fingerprint=fingerprint)

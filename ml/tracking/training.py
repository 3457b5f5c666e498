"""Training as an MLflow run: params, per-epoch metrics, data fingerprint, artifacts,
training curves and the pyfunc recommender.

Everything that can fail on bad input (config, data) is checked before the run
starts, so a bad call never leaves a FINISHED run behind; an exception inside the
run marks it FAILED.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ml.logs import get_logger
from ml.tracking.runs import guard_tracking_loss, mlflow_epoch_callback, start_run

log = get_logger("training")
ML_PACKAGE = Path(__file__).resolve().parents[1]  # the `ml` package, shipped with the pyfunc

PYFUNC_NAME = "recommender"


def plot_curves(history: Mapping[str, list[float]], path: Path, columns: int = 3) -> Path:
    """One panel per metric (train and val_ together), `columns` panels a row. The per-layer health
    series (`name.layer`) stay MLflow metrics only: a panel each would double the drawing time for
    little to read. Legends sit in a fixed corner and the margins are set, not searched
    (`loc="best"` and `tight_layout` were most of the drawing time, bench/train.py)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = sorted({k.removeprefix("val_") for k in history if "." not in k})
    cols = max(1, min(columns, len(names)))
    rows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.9 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for key, style in ((name, "-"), (f"val_{name}", "--")):
            if key in history:
                ax.plot(range(1, len(history[key]) + 1), history[key], style, label=key)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7, loc="upper right")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12 / rows + 0.02, top=1 - 0.08 / rows, hspace=0.6, wspace=0.3)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


_PLOT_CHILD = ("import json, sys; from pathlib import Path; from ml.tracking.training import plot_curves; "
               "plot_curves(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))")


class CurvesInBackground:
    """`plot_curves` in a child process, drawn while the run logs its other artifacts and the pyfunc.

    Drawing the panels (matplotlib's import included) took ~0.6 s of a training run's fixed
    overhead on one core while the other idled (bench/train.py). `result()` waits for the PNG;
    if the child failed or is gone, it draws in process instead (one warning), so the artifact
    is there either way.
    """

    def __init__(self, history: Mapping[str, list[float]], folder: Path) -> None:
        import subprocess
        import sys

        self.history = dict(history)
        self.path = folder / "training_curves.png"
        source = folder / "history_for_curves.json"
        source.write_text(json.dumps(self.history))
        env = dict(os.environ, MPLBACKEND="Agg",
                   PYTHONPATH=os.pathsep.join([str(ML_PACKAGE.parent), *filter(None, [os.environ.get("PYTHONPATH")])]))
        try:
            self.child: Any = subprocess.Popen([sys.executable, "-c", _PLOT_CHILD, str(source), str(self.path)],
                                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as e:
            log.warning("training curves: could not start a child process (%s); drawing them in process", e)
            self.child = None

    def result(self, timeout: float = 120.0) -> Path:
        if self.child is not None:
            try:
                _, err = self.child.communicate(timeout=timeout)
                if self.child.returncode == 0 and self.path.is_file():
                    return self.path
                detail = (err or b"").decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                log.warning("training curves: the child process failed (exit %s: %s); drawing them in process",
                            self.child.returncode, detail[0])
            except Exception as e:  # noqa: BLE001  (a timeout, a killed child): the artifact still gets drawn
                self.child.kill()
                self.child.wait(timeout=10)
                log.warning("training curves: the child process did not finish (%s); drawing them in process", e)
        return plot_curves(self.history, self.path)


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

    from ml.inference.pyfunc import TwoTowerRecommender

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
    staging = Path(_staging_dir(Path(model_dir)))
    try:
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=TwoTowerRecommender(),
            artifacts={"model_dir": str(_serving_view(Path(model_dir), staging))},
            code_paths=[str(ML_PACKAGE)],
            pip_requirements=pyfunc_requirements(),
            signature=signature,
            registered_model_name=registered_model_name,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


NOT_SERVED = ("checkpoints",)  # the fit's best-epoch weights: already in the bundle's keras/ and saved_model/


def _staging_dir(model_dir: Path) -> str:
    """A scratch folder beside the bundle (same file system: hard links work), else in the system's temp."""
    try:
        return tempfile.mkdtemp(prefix=".towerops-pyfunc-", dir=model_dir.resolve().parent)
    except OSError:
        return tempfile.mkdtemp(prefix="towerops-pyfunc-")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def _serving_view(model_dir: Path, staging: Path) -> Path:
    """The bundle without its training-only entries, as hard links (copies where links fail) for MLflow to copy.

    MLflow copies the artifacts folder twice (into a scratch folder, then into the store) and
    refuses symbolic links that lead outside it; the checkpoint is a quarter of the bundle and
    no loader reads it.
    """
    view = staging / model_dir.name
    shutil.copytree(model_dir, view, ignore=shutil.ignore_patterns(*NOT_SERVED), copy_function=_link_or_copy)
    return view


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
    """Validate config and data, then train inside an MLflow run and log everything.

    Logs one `timings` line (seconds per phase, and the wall-clock start) that bench/train.py
    reads to split the fixed overhead."""
    started = time.time()
    t0 = time.perf_counter()
    import mlflow

    from ml.data.fingerprint import dataset_fingerprint
    from ml.data.loaders import load_dataset
    from ml.data.ratings import apply_rating_config
    from ml.data.schema import Dataset
    from ml.platform import load_training_config
    from ml.secrets import describe_secret, is_secret_ref
    from ml.tracking.datasets import describe_data_source, log_training_data
    from ml.training.distribute import global_batch_problem, plan_distribution, start_distribution
    from ml.training.trainer import create_standard_trainer

    t_imports = time.perf_counter() - t0
    config = load_training_config(config_path, overrides)  # bad config: error before any run (default: towerops.yaml)
    if config.training.early_stopping_metric != "val_loss":
        from ml.evaluation.validation import stopping_metric_k

        stopping_metric_k(config.training.early_stopping_metric)  # an unknown ranking metric: same
    plan = plan_distribution(config)  # bad strategy or TF_CONFIG: same
    dataset = data if isinstance(data, Dataset) else load_dataset(  # bad data: same
        str(data), rating_scale=config.data.rating_scale, like_threshold=config.data.like_threshold)
    fingerprint = dataset_fingerprint(dataset)
    t_load = time.perf_counter() - t0 - t_imports
    distribution = start_distribution(plan)  # waits for the other workers; a missing one: error, no run
    t_dist = time.perf_counter() - t0 - t_imports - t_load  # TensorFlow's import and the strategy
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
            # an env:VAR reference is recorded as written (the gate re-reads it at use time); never the DSN itself;
            # a folder as its absolute path, a DSN without its password: the same from every host
            "data.source": data if is_secret_ref(data) else describe_secret(describe_data_source(dataset, data)["uri"]),
            "data.hash": fingerprint["hash"],
            **{f"data.rows.{k}": v for k, v in fingerprint["rows"].items()},
        })
        mlflow.log_params(params)
        mlflow.set_tags({"towerops.data_hash": fingerprint["hash"], "towerops.embedding_dim": str(config.embedding_dim),
                         **distribution.tags()})
        mlflow.log_dict(fingerprint, "data_fingerprint.json")
        mlflow.log_dict(config.to_dict(), "config.json")

        # the data as an MLflow dataset (absolute source, content hash) and the exact evaluation set, so
        # the gate on any host evaluates on the test part this run held out (ml.tracking.datasets)
        log_training_data(apply_rating_config(dataset, config.data.rating_scale, config.data.like_threshold),
                          data, fingerprint, config.training.validation_split, config.training.test_split)

        trainer = create_standard_trainer(model_dir=out_dir, config=config, callbacks=[mlflow_epoch_callback(run_id)],
                                          distribution=distribution)
        t_run = time.perf_counter()
        history = trainer.train(dataset=dataset, data_fingerprint=fingerprint)
        t_trained = time.perf_counter()
        scratch = tempfile.TemporaryDirectory(prefix="towerops-curves-")
        curves = CurvesInBackground(history, Path(scratch.name))
        metadata = json.loads((out_dir / "metadata.json").read_text())
        from ml.inference.catalog import catalog_hash, towers_fingerprint

        # the embedding space (towers' weights) and the catalog: the registry numbers versions with them
        mlflow.set_tags({"towerops.feature_schema_hash": metadata["feature_schema_hash"],
                         "towerops.towers_fingerprint": towers_fingerprint(out_dir),
                         "towerops.catalog_hash": catalog_hash(out_dir)})

        best = {f"best_{k}": float(v) for k, v in metadata["final_metrics"].items()}
        best["best_epoch"] = float(trainer.best_epoch if trainer.best_epoch is not None else -1)
        best["epochs_run"] = float(metadata["epochs_run"])
        mlflow.log_metrics(best)
        # embedding health of the exported bundle, one step after the last epoch, so each health_* metric's
        # latest value is the model that was exported (the per-epoch values stay in its history)
        health = {k: float(v) for k, v in metadata.get("health", {}).items() if v is not None}
        if health:
            mlflow.log_metrics(health, step=int(metadata["epochs_run"]))

        mlflow.log_artifact(str(out_dir / "history.json"))
        mlflow.log_artifact(str(out_dir / "metadata.json"))
        mlflow.log_artifacts(str(out_dir / "preprocessing"), "preprocessing")
        mlflow.log_artifacts(str(out_dir / "keras"), "keras")
        mlflow.log_artifacts(str(out_dir / "saved_model"), "saved_model")
        info = log_recommender(out_dir)
        with scratch:
            mlflow.log_artifact(str(curves.result()))
        mlflow.set_tag("towerops.model_uri", info.model_uri)
        timings = {"started": round(started, 3), "imports": t_imports, "load_data": t_load, "tensorflow": t_dist,
                   "mlflow_before": t_run - t0 - t_imports - t_load - t_dist, **trainer.timings,
                   "mlflow_after": time.perf_counter() - t_trained}
        log.info("timings: %s", json.dumps({k: round(v, 3) for k, v in timings.items()}))
        log.info("run %s finished: best epoch %s, model %s", run_id, trainer.best_epoch, info.model_uri)
    return TrainResult(run_id=run_id, model_uri=info.model_uri, model_dir=out_dir, history=history, metrics=best,
                       fingerprint=fingerprint)


def _train_worker(config: Any, dataset: Any, fingerprint: dict[str, Any], distribution: Any,
                  model_dir: str | Path | None) -> TrainResult:
    """A non-chief worker of a multi-worker cluster: trains in step with the chief, logs no
    MLflow run and writes no bundle (the trainer checkpoints to a temporary folder)."""
    from ml.training.trainer import create_standard_trainer

    if os.environ.get("MLFLOW_RUN_ID"):
        log.warning("MLFLOW_RUN_ID is set on non-chief worker %s: that run gets nothing from this worker (start "
                    "workers with `towerops train`, only the chief through `mlflow run`)", distribution.plan.describe())
    trainer = create_standard_trainer(model_dir=model_dir or "models/two_tower", config=config,
                                      distribution=distribution)
    history = trainer.train(dataset=dataset, data_fingerprint=fingerprint)
    log.info("worker %s finished; the chief logs the run and writes the bundle", distribution.plan.describe())
    return TrainResult(run_id="", model_uri="", model_dir=trainer.model_dir, history=history, fingerprint=fingerprint)

"""An Optuna study whose trials are nested MLflow runs under one parent run."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ml.evaluation.validation import ValidationRanking
from ml.logs import get_logger
from ml.platform import load_training_config
from ml.training.tuning import TuningSpec, apply_params, load_tuning_spec, validate_space

log = get_logger("training")

def _objective_callbacks(trial: Any, metric: str, ranking: ValidationRanking | None, mlflow_cb: Any) -> tuple[list, list]:
    """[metric → logs, MLflow epoch logger, report + prune]; returns them and the per-epoch values."""
    import keras
    import optuna

    values: list[float] = []

    class _Objective(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is None:
                return
            if ranking is not None:
                logs[metric] = ranking(self.model)
            value = float(logs.get(metric, float("nan")))
            values.append(value)

    class _Prune(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            value = values[-1] if values else float("nan")
            if not math.isfinite(value):
                return
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}: {metric}={value:.4f}")

    return [_Objective(), mlflow_cb, _Prune()], values


# ------------------------------------------------------------------ run
@dataclass
class TuneResult:
    run_id: str
    best_value: float
    best_params: dict[str, Any]
    best_trial: int
    best_run_id: str
    best_config_path: Path
    metric: str
    states: dict[str, int] = field(default_factory=dict)


def _make_study(spec: TuningSpec, name: str):
    import optuna

    if spec.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=spec.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=spec.sampler_startup_trials)
    pruner = (optuna.pruners.NopPruner() if spec.pruner == "none" else
              optuna.pruners.MedianPruner(n_startup_trials=spec.pruner_startup_trials,
                                          n_warmup_steps=spec.pruner_warmup_steps,
                                          interval_steps=spec.pruner_interval_steps))
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # trials are logged by towerops.training instead
    study = optuna.create_study(direction=spec.direction, sampler=sampler, pruner=pruner, study_name=name)
    for point in spec.enqueue:
        by_name = {p.name: p for p in spec.space}
        study.enqueue_trial({k: by_name[k]._encode(v) for k, v in point.items()})
    return study


@dataclass
class _Study:
    """What every trial shares: the spec, the base config, the prepared data and the objective."""

    spec: TuningSpec
    base: Any
    shared: Any                 # the trainer whose pipeline and prepared data the trials reuse
    arrays: tuple[Any, Any, Any]
    ranking: ValidationRanking | None
    distribution: Any
    scratch: Path


def _prepare_study(data: Any, tuning_path: str | Path, config_path: str | Path | None,
                   overrides: Mapping[str, Any] | None, n_trials: int | None, timeout_s: float | None,
                   out: str | Path) -> tuple[_Study, Path, dict[str, Any]]:
    """Everything that can be wrong in the input fails here, before any run: (study, out path, fingerprint)."""
    from ml.data.fingerprint import dataset_fingerprint
    from ml.data.loaders import load_dataset
    from ml.data.schema import Dataset
    from ml.training.distribute import plan_distribution, start_distribution
    from ml.training.trainer import TwoTowerTrainer

    spec = _tuning_spec(tuning_path, n_trials, timeout_s)  # default: the platform config's tuning section
    base = load_training_config(config_path, overrides)
    validate_space(spec, base)
    if base.training.validation_split <= 0:
        raise ValueError("training.validation_split=0: tuning scores trials on the validation split; set it > 0 "
                         "(e.g. --set training.validation_split=0.2)")
    if base.training.distribute_strategy == "multi_worker_mirrored":
        raise ValueError("training.distribute_strategy=multi_worker_mirrored: trials run in one process; tune with "
                         "one_device or mirrored and train the best config on the cluster")
    plan = plan_distribution(base)
    out_path = Path(out)
    if out_path.suffix.lower() != ".json":
        raise ValueError(f"--out {out_path} must end in .json (best_config.json is written as JSON)")
    if not out_path.parent.exists():
        raise FileNotFoundError(f"--out {out_path}: folder {out_path.parent} does not exist; create it or pick another")
    dataset = data if isinstance(data, Dataset) else load_dataset(
        str(data), rating_scale=base.data.rating_scale, like_threshold=base.data.like_threshold)
    fingerprint = dataset_fingerprint(dataset)
    distribution = start_distribution(plan)
    scratch = Path(tempfile.mkdtemp(prefix="towerops-tune-"))
    try:
        shared = TwoTowerTrainer(scratch / "features", base, distribution=distribution)
        arrays = shared.training_arrays(shared.prepare(dataset))  # train and validation parts only
        if arrays[2] is None:
            raise ValueError("the time split left no validation rows (every user has too few interactions): "
                             "raise training.validation_split or use more data")
        ranking = ValidationRanking(shared, spec.metric, spec.ranking_k) if spec.ranking_k else None
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return _Study(spec, base, shared, arrays, ranking, distribution, scratch), out_path, fingerprint


def _run_trial(st: _Study, trial: Any) -> float:
    """One trial as a nested MLflow run: train with the suggested params, report per epoch, prune."""
    import keras
    import mlflow
    import optuna

    from ml.tracking.runs import mlflow_epoch_callback, start_run
    from ml.training.trainer import TwoTowerTrainer

    spec = st.spec
    params = {p.name: p.suggest(trial) for p in spec.space}
    cfg = apply_params(st.base, params, epochs=spec.trial_epochs)
    trial_dir = st.scratch / f"trial-{trial.number}"
    with start_run(run_name=f"trial-{trial.number}", nested=True,
                   tags={"towerops.step": "tune-trial", "optuna.trial": str(trial.number)}) as child:
        trial.set_user_attr("mlflow_run_id", child.info.run_id)
        mlflow.log_params({k: json.dumps(v) if isinstance(v, list) else v for k, v in cfg.flat_params().items()})
        mlflow.log_param("optuna.trial", trial.number)
        callbacks, values = _objective_callbacks(trial, spec.metric, st.ranking, mlflow_epoch_callback(child.info.run_id))
        trainer = TwoTowerTrainer(trial_dir, cfg, callbacks=callbacks, distribution=st.distribution)
        trainer.pipeline, trainer.prepared = st.shared.pipeline, st.shared.prepared
        pruned: optuna.TrialPruned | None = None
        try:
            trainer.fit(*st.arrays)
        except optuna.TrialPruned as exc:
            pruned = exc
        finally:
            shutil.rmtree(trial_dir, ignore_errors=True)
        mlflow.log_metric("epochs_run", float(len(values)))
        if pruned is not None:
            mlflow.set_tag("towerops.trial_state", "PRUNED")
            log.info("trial %d pruned: %s", trial.number, pruned)
        else:
            best_epoch = trainer.best_epoch if trainer.best_epoch is not None else len(values) - 1
            value = values[min(best_epoch, len(values) - 1)]
            mlflow.log_metrics({"objective": value, "best_epoch": float(best_epoch)})
            mlflow.set_tag("towerops.trial_state", "COMPLETE" if math.isfinite(value) else "FAIL")
            log.info("trial %d: %s=%.4f with %s", trial.number, spec.metric, value, params)
    keras.backend.clear_session()
    if pruned is not None:
        raise pruned
    return value


def _record_best(study: Any, st: _Study, out_path: Path) -> tuple[Any, dict[str, Any], str, dict[str, int]]:
    """Trial counts, the best trial's config written to `out_path` and logged, trials.csv; in the parent run."""
    import mlflow
    import optuna

    spec = st.spec
    states = {s.name.lower(): sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
    mlflow.log_metrics({f"n_trials_{k}": float(states[k]) for k in ("complete", "pruned", "fail")})
    states = {k: v for k, v in states.items() if v}
    if not states.get("complete"):
        raise ValueError(f"no trial completed ({states}): see the trial runs; widen timeout_s, lower "
                         "pruner.n_startup_trials or check the data")
    best = study.best_trial
    by_name = {p.name: p for p in spec.space}
    best_params = {k: by_name[k].decode(v) for k, v in best.params.items()}
    best_config = apply_params(st.base, best_params)
    out_path.write_text(json.dumps(best_config.to_dict(), indent=2) + "\n", encoding="utf-8")
    mlflow.log_dict(best_config.to_dict(), "best_config.json")
    mlflow.log_params({f"best.{k}": json.dumps(v) if isinstance(v, list) else v for k, v in best_params.items()})
    mlflow.log_metric(f"best_{spec.metric}", float(best.value))
    best_run = best.user_attrs.get("mlflow_run_id", "")
    mlflow.set_tags({"towerops.best_trial": str(best.number), "towerops.best_trial_run_id": best_run})
    try:
        trials = study.trials_dataframe()
        with tempfile.TemporaryDirectory() as tmp:
            trials.to_csv(Path(tmp) / "trials.csv", index=False)
            mlflow.log_artifact(str(Path(tmp) / "trials.csv"))
    except Exception as exc:  # noqa: BLE001 - the table is a convenience, the result stands
        log.warning("could not log trials.csv: %s", exc)
    return best, best_params, best_run, states


def _tuning_spec(path: str | Path | None, n_trials: int | None, timeout_s: float | None) -> Any:
    """The tuning file `path`, else the `tuning` section of the platform config (towerops.yaml)."""
    if path:
        return load_tuning_spec(path, n_trials=n_trials, timeout_s=timeout_s)
    from ml.platform import section
    from ml.training.tuning import tuning_spec_from_dict

    found = section("tuning")
    raw = dict(found.raw)
    if n_trials is not None:
        raw["n_trials"] = n_trials
    if timeout_s is not None:
        raw["timeout_s"] = timeout_s
    return tuning_spec_from_dict(raw, found.source)


def run_tuning(
    data: Any,
    tuning_path: str | Path | None = None,
    config_path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    n_trials: int | None = None,
    timeout_s: float | None = None,
    out: str | Path = "best_config.json",
    run_name: str = "tune",
    experiment: str | None = None,
) -> TuneResult:
    """Validate everything, then run the Optuna study inside an MLflow run (trials nested).

    Trials are scored on the validation part of the time split (early stopping too); the
    test part, which offline evaluation and the gate use, is never read here.
    """
    import mlflow

    from ml.tracking.runs import guard_tracking_loss, start_run

    st, out_path, fingerprint = _prepare_study(data, tuning_path, config_path, overrides, n_trials, timeout_s, out)
    spec, base = st.spec, st.base
    log.info("tuning: %d trials max%s, objective %s (%s), %d parameters: %s", spec.n_trials,
             f", {spec.timeout_s:g}s budget" if spec.timeout_s else "", spec.metric, spec.direction, len(spec.space),
             ", ".join(f"{p.name} {p.describe()}" for p in spec.space))
    try:
        with guard_tracking_loss(start_run(run_name=run_name, experiment=experiment,
                                           tags={"towerops.step": "tune"})) as parent:
            parent_id = parent.info.run_id
            mlflow.log_params({
                "tune.n_trials": spec.n_trials, "tune.timeout_s": spec.timeout_s, "tune.metric": spec.metric,
                "tune.direction": spec.direction, "tune.sampler": spec.sampler, "tune.seed": spec.seed,
                "tune.pruner": spec.pruner, "tune.trial_epochs": spec.trial_epochs or base.training.epochs,
                "data.hash": fingerprint["hash"],
                **{f"space.{p.name}": p.describe() for p in spec.space},
            })
            mlflow.set_tags({"towerops.data_hash": fingerprint["hash"], **st.distribution.tags()})
            mlflow.log_dict(spec.to_dict(), "tuning.json")
            mlflow.log_dict(base.to_dict(), "base_config.json")
            study = _make_study(spec, f"towerops-{parent_id}")
            study.optimize(lambda trial: _run_trial(st, trial), n_trials=spec.n_trials, timeout=spec.timeout_s,
                           gc_after_trial=True)
            best, best_params, best_run, states = _record_best(study, st, out_path)
            log.info("tuning finished: best trial %d %s=%.4f %s; wrote %s", best.number, spec.metric, best.value,
                     best_params, out_path)
    finally:
        shutil.rmtree(st.scratch, ignore_errors=True)
    return TuneResult(run_id=parent_id, best_value=float(best.value), best_params=best_params, best_trial=best.number,
                      best_run_id=best_run, best_config_path=out_path, metric=spec.metric, states=states)

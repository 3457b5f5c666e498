"""An Optuna study whose trials are nested MLflow runs under one parent run."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from ml.evaluation.validation import ValidationRanking
from ml.logs import get_logger
from ml.platform import load_training_config
from ml.training.tuning import (
    DEFAULT_GRACE_PERIOD_S,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    TuningSpec,
    apply_params,
    load_tuning_spec,
    validate_space,
)

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
    status: str = "FINISHED"    # the parent run's, as this worker left it (shared studies: RUNNING until complete)


def _sampler_pruner(spec: TuningSpec) -> tuple[Any, Any]:
    import optuna

    if spec.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=spec.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=spec.sampler_startup_trials)
    pruner = (optuna.pruners.NopPruner() if spec.pruner == "none" else
              optuna.pruners.MedianPruner(n_startup_trials=spec.pruner_startup_trials,
                                          n_warmup_steps=spec.pruner_warmup_steps,
                                          interval_steps=spec.pruner_interval_steps))
    return sampler, pruner


def _enqueue(study: Any, spec: TuningSpec) -> None:
    by_name = {p.name: p for p in spec.space}
    for point in spec.enqueue:
        study.enqueue_trial({k: by_name[k]._encode(v) for k, v in point.items()})


def _make_study(spec: TuningSpec, name: str):
    """A study of this process only (in memory), the seed's points enqueued."""
    import optuna

    sampler, pruner = _sampler_pruner(spec)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # trials are logged by towerops.training instead
    study = optuna.create_study(direction=spec.direction, sampler=sampler, pruner=pruner, study_name=name)
    _enqueue(study, spec)
    return study


# ------------------------------------------------------------------ a study shared by workers
STUDY_KEY_ATTR = "towerops.study_key"   # hash of what every worker must agree on
STUDY_TAG = "towerops.study"            # MLflow tag of the shared parent run: the study name
WORKER = f"{socket.gethostname()}:{os.getpid()}"


def sqlalchemy_url(url: str) -> str:
    """postgresql:// with the driver towerops ships (psycopg2) unless psycopg 3 is installed:
    SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None:
        return f"postgresql+psycopg2://{rest}"
    return url


def _masked_url(url: str) -> str:
    """The storage URL with its password as ***; raises rather than return a URL that still holds it."""
    from urllib.parse import unquote, urlsplit

    from ml.secrets import mask_dsn

    shown = mask_dsn(url)
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    for secret in {password, unquote(password or "")} - {None, "", "***"}:
        if secret in shown:
            raise ValueError("tuning storage URL: its password could not be masked; put it in the environment "
                             "(PGPASSWORD or ~/.pgpass) and pass the URL without it")
    return shown


class SharedStudy:
    """An Optuna study in RDB storage (PostgreSQL) that `towerops tune` workers on several hosts join.

    Why a lock: "count the trials, then ask for one" must be atomic across workers so that
    `n_trials` is the study's total, not each worker's; creating the study (and enqueueing the
    seed's points once) and finding the MLflow parent run must happen once. On PostgreSQL a
    session-level advisory lock keyed on the study name does all three; other databases
    (SQLite on one host) run without it.

    Why heartbeats: a worker that dies mid-trial (killed, host lost) never tells its trial,
    which would stay RUNNING and count toward n_trials forever. Optuna's heartbeat (RDBStorage
    `heartbeat_interval`/`grace_period`) records a beat for each running trial; before asking,
    a worker fails the trials without one for `grace_period_s` (`fail_stale_trials`), marks
    their MLflow runs FAILED, and they stop counting (see `_started`)."""

    def __init__(self, storage_url: str, name: str, heartbeat_interval_s: int = DEFAULT_HEARTBEAT_INTERVAL_S,
                 grace_period_s: int = DEFAULT_GRACE_PERIOD_S) -> None:
        import warnings

        import optuna

        from ml.secrets import mask_dsn, remember_secret

        remember_secret(storage_url)  # scrubbed from every later log line
        self.name = name
        self.shown = _masked_url(storage_url)  # what logs and params may show
        self.grace_period_s = grace_period_s
        self.parent_run_id: str | None = None  # the study's MLflow parent run, once found
        try:
            with warnings.catch_warnings():  # heartbeat_interval is flagged experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.storage = optuna.storages.RDBStorage(
                    sqlalchemy_url(storage_url), engine_kwargs={"pool_pre_ping": True},
                    heartbeat_interval=heartbeat_interval_s, grace_period=grace_period_s,
                    heartbeat_stale_trial_callback=self._stale_trial_failed)
        except Exception as exc:  # noqa: BLE001 - any driver error becomes one readable message
            raise ConnectionError(f"tuning storage {self.shown}: cannot open it ({type(exc).__name__}: "
                                  f"{mask_dsn(str(exc).splitlines()[0] if str(exc) else '')}); check the URL, that "
                                  "the database exists and accepts this user (e.g. createdb optuna)") from None
        self._lock_conn: Any = None
        self._key = int.from_bytes(hashlib.sha256(f"towerops-tune:{name}".encode()).digest()[:8], "big", signed=True)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the study's advisory lock (PostgreSQL); a no-op on other databases."""
        engine = self.storage.engine
        if engine.dialect.name != "postgresql":
            yield
            return
        from sqlalchemy import text

        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                conn.commit()

    def open(self, spec: TuningSpec, key: str) -> Any:
        """Create the study (enqueueing the seed's points) or join it; a worker with another
        spec, base config or data is refused, naming the study."""
        import optuna

        sampler, pruner = _sampler_pruner(spec)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with self.lock():
            study = optuna.create_study(storage=self.storage, study_name=self.name, direction=spec.direction,
                                        sampler=sampler, pruner=pruner, load_if_exists=True)
            theirs = study.user_attrs.get(STUDY_KEY_ATTR)
            if theirs is None and not study.trials:
                study.set_user_attr(STUDY_KEY_ATTR, key)
                _enqueue(study, spec)
                log.info("tuning: created study %r in %s", self.name, self.shown)
            elif theirs != key:
                raise ValueError(f"study {self.name!r} in {self.shown} was started with another search (tuning "
                                 "file, base config or data differ from this worker's): give every worker the same "
                                 "--tuning, --config, --set and --data, or pass a new --study-name")
            else:
                log.info("tuning: joined study %r in %s (%d trials so far)", self.name, self.shown, len(study.trials))
        return study

    def next_trial(self, study: Any, n_trials: int) -> Any | None:
        """The next trial of the study, or None once it holds `n_trials` (every worker's count).

        Stale trials (a dead worker's) are failed first, so they no longer count; the new
        trial's first heartbeat is recorded before the lock is released, so every RUNNING trial
        another worker counts can go stale."""
        import warnings

        with self.lock():
            self.fail_stale_trials(study)
            if _started(study) >= n_trials:
                return None
            with warnings.catch_warnings():  # Optuna's "heartbeat is supposed to be used with optimize"
                warnings.filterwarnings("ignore", message=".*[Hh]eartbeat.*")
                trial = study.ask()
            self.storage.record_heartbeat(trial._trial_id)
            return trial

    def heartbeat(self, trial: Any) -> Any:
        """A context that records the trial's heartbeat every heartbeat_interval_s while it runs:
        the thread `Study.optimize` runs around each trial (this is an ask/tell loop)."""
        from optuna.storages._heartbeat import get_heartbeat_thread

        return get_heartbeat_thread(trial._trial_id, self.storage)

    def fail_stale_trials(self, study: Any) -> None:
        """Optuna's `fail_stale_trials`: RUNNING trials without a heartbeat for grace_period_s become FAIL."""
        import warnings

        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)

    def progress(self, study: Any) -> tuple[int, int]:
        """(trials finished that count toward n_trials, trials RUNNING), stale trials failed first."""
        import optuna

        self.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
        return _counted(trials) - running, running

    def _stale_trial_failed(self, study: Any, trial: Any) -> None:
        """Optuna's callback for a trial failed as stale: say so, and mark its MLflow run FAILED."""
        from mlflow import MlflowClient

        worker = trial.user_attrs.get("towerops.worker", "an unknown worker")
        log.warning("tuning: trial %d of %s had no heartbeat for %ds (its worker died?): marked FAIL; it no longer "
                    "counts toward n_trials", trial.number, worker, self.grace_period_s)
        try:
            client = MlflowClient()
            run_id = trial.user_attrs.get("mlflow_run_id") or self._trial_run_id(client, trial.number)
            if not run_id:
                return
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_tag(run_id, "towerops.trial_state", "FAIL")
                client.set_tag(run_id, "towerops.failure", f"no heartbeat from {worker} for {self.grace_period_s}s: "
                                                           f"failed as stale by {WORKER}")
                client.set_terminated(run_id, "FAILED")
        except Exception as exc:  # noqa: BLE001 - the study is right; the run's status is a courtesy
            log.warning("tuning: could not mark the MLflow run of stale trial %d FAILED: %s", trial.number, exc)

    def _trial_run_id(self, client: Any, number: int) -> str | None:
        """The trial's run under the parent, by its optuna.trial tag (a worker that died before linking it)."""
        if not self.parent_run_id:
            return None
        parent = client.get_run(self.parent_run_id)
        found = client.search_runs([parent.info.experiment_id],
                                   f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and "
                                   f"tags.`optuna.trial` = '{number}'", max_results=1)
        return found[0].info.run_id if found else None


ENDED_BY_ATTR = "towerops.ended_by"    # set by the worker that tells a trial (not on a stale trial)


def _counted(trials: Any) -> int:
    """Trials that count toward n_trials: running or finished, except those failed as stale.

    An enqueued, WAITING point is not one yet; a FAIL trial no worker told (its worker died,
    `fail_stale_trials` failed it) is not one either: it has no result."""
    import optuna

    state = optuna.trial.TrialState
    return sum(t.state in (state.RUNNING, state.COMPLETE, state.PRUNED)
               or (t.state == state.FAIL and ENDED_BY_ATTR in t.user_attrs) for t in trials)


def _started(study: Any) -> int:
    """Trials started or finished that count toward n_trials (see `_counted`)."""
    return _counted(study.get_trials(deepcopy=False))


def _study_key(spec: TuningSpec, base: Any, fingerprint: Mapping[str, Any]) -> str:
    blob = json.dumps({"spec": spec.study_key(), "base": base.to_dict(), "data": fingerprint.get("hash")},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _optimize(study: Any, st: "_Study", shared: SharedStudy | None) -> None:
    """Ask, train and tell until the study holds n_trials trials or the time budget is spent.

    One loop for both cases (a private study, a shared one): n_trials counts the study's
    trials, so with several workers it is their total."""
    import gc

    import optuna

    spec = st.spec
    deadline = time.monotonic() + spec.timeout_s if spec.timeout_s else None
    while deadline is None or time.monotonic() < deadline:
        if shared is not None:
            trial = shared.next_trial(study, spec.n_trials)
        else:
            trial = study.ask() if _started(study) < spec.n_trials else None
        if trial is None:
            return
        try:
            with shared.heartbeat(trial) if shared is not None else nullcontext():
                value = _run_trial(st, trial)
        except optuna.TrialPruned:
            _tell(study, trial, state=optuna.trial.TrialState.PRUNED)
        except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale by another worker meanwhile
            _stale_meanwhile(trial)
        except BaseException:
            _tell(study, trial, state=optuna.trial.TrialState.FAIL)
            raise
        else:
            _tell(study, trial, value)  # a non-finite value marks the trial FAIL
        finally:
            gc.collect()


def _tell(study: Any, trial: Any, value: float | None = None, state: Any = None) -> None:
    """`study.tell`, the trial marked as told by this worker (so a FAIL counts toward n_trials)."""
    import optuna

    try:
        trial.set_user_attr(ENDED_BY_ATTR, WORKER)
        study.tell(trial, value, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:
        _stale_meanwhile(trial)


def _stale_meanwhile(trial: Any) -> None:
    log.warning("tuning: trial %d was failed as stale by another worker while it ran here (no heartbeat reached the "
                "storage for grace_period_s: a slow or unreachable database?); its result is dropped", trial.number)


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
                   out: str | Path, storage: str | None = None, study_name: str | None = None
                   ) -> tuple[_Study, Path, dict[str, Any]]:
    """Everything that can be wrong in the input fails here, before any run: (study, out path, fingerprint)."""
    from ml.data.fingerprint import dataset_fingerprint
    from ml.data.loaders import load_dataset
    from ml.data.schema import Dataset
    from ml.training.distribute import plan_distribution, start_distribution
    from ml.training.trainer import TwoTowerTrainer

    spec = _tuning_spec(tuning_path, n_trials, timeout_s)  # default: the platform config's tuning section
    base = load_training_config(config_path, overrides)
    validate_space(spec, base)
    if (study_name or spec.study_name) and not (storage or spec.storage):
        raise ValueError(f"study name {study_name or spec.study_name!r} needs a shared storage: pass --storage "
                         "postgresql://... (or env:VAR), or set storage in the tuning section of towerops.yaml")
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
        trial.set_user_attr("towerops.worker", WORKER)  # which host and process ran it (shared studies)
        mlflow.set_tag("towerops.worker", WORKER)
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


def _record_best(study: Any, st: _Study, out_path: Path, on_parent: bool = True, shared: bool = False
                 ) -> tuple[Any, dict[str, Any], str, dict[str, int]]:
    """Trial counts, the best trial's config written to `out_path` and logged, trials.csv; in the parent run.

    `on_parent=False` (a shared study whose other workers still run trials): only the counts
    and `out_path`; the worker that finishes the study logs the final best on the parent."""
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
    if not on_parent:
        log.info("tuning: other workers still run trials of the study; the last to finish logs the best on the "
                 "parent run")
        return best, best_params, best.user_attrs.get("mlflow_run_id", ""), states
    mlflow.log_dict(best_config.to_dict(), "best_config.json")
    shown = {f"best.{k}": json.dumps(v) if isinstance(v, list) else v for k, v in best_params.items()}
    if shared:  # a later worker may find a better trial: tags can be updated, params cannot
        mlflow.set_tags({k: str(v) for k, v in shown.items()})
    else:
        mlflow.log_params(shown)
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


def _shared_study(storage: str | None, study_name: str | None, spec: TuningSpec | None = None
                  ) -> SharedStudy | None:
    """The shared study's storage (env:VAR resolved), or None for a study of this process only."""
    from ml.secrets import resolve_secret_ref
    from ml.training.tuning import DEFAULT_STUDY_NAME

    if not storage:
        return None
    url = resolve_secret_ref(storage, "tuning storage") or ""
    if "://" not in url:
        raise ValueError("tuning storage must be an SQLAlchemy URL such as postgresql://user@host:5432/optuna "
                         "(or env:VAR naming one)")
    beats = {} if spec is None else {"heartbeat_interval_s": spec.heartbeat_interval_s,
                                     "grace_period_s": spec.grace_period_s}
    return SharedStudy(url, study_name or DEFAULT_STUDY_NAME, **beats)


def _shared_parent(shared: SharedStudy, run_name: str, experiment: str | None) -> tuple[Any, bool]:
    """(the active parent run, whether this worker created it): the run tagged towerops.study=<name>
    in the experiment, found or created under the study's lock so there is one.

    Inside `mlflow run` the entry-point run is never the parent: `mlflow run` ends it when this
    worker exits, while the parent must stay RUNNING until the study is complete. It gets the
    tag towerops.study_parent_run_id instead."""
    import mlflow
    from mlflow import MlflowClient

    from ml.settings import ensure_tracking_uri
    from ml.tracking.runs import DEFAULT_EXPERIMENT, set_experiment

    uri = ensure_tracking_uri()
    own = os.environ.get("MLFLOW_RUN_ID")  # inside `mlflow run`: this worker's entry-point run
    client = MlflowClient()
    with shared.lock():
        if own:
            experiment_id = client.get_run(own).info.experiment_id
        else:
            set_experiment(experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT, uri)
            experiment_id = mlflow.get_experiment_by_name(
                experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT).experiment_id
        name = shared.name.replace("'", "\\'")
        found = client.search_runs([experiment_id], f"tags.`{STUDY_TAG}` = '{name}' and tags.`towerops.step` = 'tune'",
                                   max_results=1, order_by=["attributes.start_time ASC"])
        created = not found
        if found:
            parent_id = found[0].info.run_id
        else:
            parent_id = client.create_run(experiment_id, run_name=run_name,
                                          tags={STUDY_TAG: shared.name, "towerops.step": "tune"}).info.run_id
        if own and own != parent_id:  # the entry-point run points at the study's parent
            client.set_tag(own, "towerops.study_parent_run_id", parent_id)
    if own:  # the fluent runs below are the parent and its trials: none may resume the entry-point run
        os.environ.pop("MLFLOW_RUN_ID", None)
    log.info("tuning: %s parent run %s of study %r", "created" if created else "joined", parent_id, shared.name)
    shared.parent_run_id = parent_id
    return mlflow.start_run(run_id=parent_id), created


def _end_shared_parent(shared: SharedStudy, study: Any, n_trials: int, failed: bool = False) -> str:
    """End this worker's part in the study's parent run; returns the status it left.

    FINISHED only once the study is complete (n_trials counted trials finished, none RUNNING);
    otherwise RUNNING, for the workers still at it (the last to finish closes it) or a worker
    started later. A worker that stops on an error leaves it RUNNING while other workers run
    trials, else FAILED (a worker that joins later resumes it). Decided and written under the
    study's lock, so a worker leaving RUNNING cannot overwrite the last worker's FINISHED."""
    import mlflow

    with shared.lock():
        finished, running = shared.progress(study)
        if failed:
            status = "RUNNING" if running else "FAILED"
        else:
            status = "FINISHED" if finished >= n_trials and not running else "RUNNING"
        if status == "RUNNING":
            log.info("tuning: the study has %d of %d trials finished and %d running on other workers; the parent run "
                     "%s stays RUNNING until a worker completes the study", finished, n_trials, running,
                     shared.parent_run_id)
        mlflow.end_run(status)  # RUNNING: this process lets go of the run (MLflow records an end time meanwhile)
    return status


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
    storage: str | None = None,
    study_name: str | None = None,
) -> TuneResult:
    """Validate everything, then run the Optuna study inside an MLflow run (trials nested).

    Trials are scored on the validation part of the time split (early stopping too); the
    test part, which offline evaluation and the gate use, is never read here. With `storage`
    (an Optuna RDB URL, e.g. postgresql://..., or env:VAR; default the tuning file's
    `storage`) the study lives in that database under `study_name`: workers on several hosts
    run this same call, share its n_trials, and nest their trials under one parent run that
    they find by the tag towerops.study=<study name>. The parent is ended FINISHED only by the
    worker that completes the study (see `_end_shared_parent`); a dead worker's trial is failed
    once its heartbeat is grace_period_s old and stops counting (see `SharedStudy`).
    """
    import mlflow

    from ml.tracking.runs import guard_tracking_loss, start_run

    st, out_path, fingerprint = _prepare_study(data, tuning_path, config_path, overrides, n_trials, timeout_s, out,
                                               storage, study_name)
    spec, base = st.spec, st.base
    shared = _shared_study(storage or spec.storage, study_name or spec.study_name, spec)
    log.info("tuning: %d trials max%s, objective %s (%s), %d parameters: %s", spec.n_trials,
             f", {spec.timeout_s:g}s budget" if spec.timeout_s else "", spec.metric, spec.direction, len(spec.space),
             ", ".join(f"{p.name} {p.describe()}" for p in spec.space))
    params = {
        "tune.n_trials": spec.n_trials, "tune.timeout_s": spec.timeout_s, "tune.metric": spec.metric,
        "tune.direction": spec.direction, "tune.sampler": spec.sampler, "tune.seed": spec.seed,
        "tune.pruner": spec.pruner, "tune.trial_epochs": spec.trial_epochs or base.training.epochs,
        "data.hash": fingerprint["hash"],
        **{f"space.{p.name}": p.describe() for p in spec.space},
    }
    try:
        if shared is None:
            active = start_run(run_name=run_name, experiment=experiment, tags={"towerops.step": "tune"})
            created = True
        else:
            study = shared.open(spec, _study_key(spec, base, fingerprint))
            active, created = _shared_parent(shared, run_name, experiment)
            params = {**params, "tune.storage": shared.shown, "tune.study_name": shared.name}
            params.pop("tune.timeout_s")  # each worker has its own budget
        with guard_tracking_loss(active) as parent:
            parent_id = parent.info.run_id
            if created:
                mlflow.log_params(params)
                mlflow.set_tags({"towerops.data_hash": fingerprint["hash"], **st.distribution.tags()})
                mlflow.log_dict(spec.to_dict(), "tuning.json")
                mlflow.log_dict(base.to_dict(), "base_config.json")
            if shared is None:
                study = _make_study(spec, f"towerops-{parent_id}")
                _optimize(study, st, None)
                best, best_params, best_run, states = _record_best(study, st, out_path)
                status = "FINISHED"  # as the `with` ends it
            else:
                try:
                    _optimize(study, st, shared)
                    best, best_params, best_run, states = _record_best(
                        study, st, out_path, on_parent=not shared.progress(study)[1], shared=True)
                except BaseException:
                    _let_go_on_error(shared, study, spec.n_trials)
                    raise
                status = _end_shared_parent(shared, study, spec.n_trials)
            log.info("tuning finished: best trial %d %s=%.4f %s; wrote %s", best.number, spec.metric, best.value,
                     best_params, out_path)
    finally:
        shutil.rmtree(st.scratch, ignore_errors=True)
    return TuneResult(run_id=parent_id, best_value=float(best.value), best_params=best_params, best_trial=best.number,
                      best_run_id=best_run, best_config_path=out_path, metric=spec.metric, states=states,
                      status=status)


def _let_go_on_error(shared: SharedStudy, study: Any, n_trials: int) -> None:
    """A worker stopping on an error: the parent stays RUNNING while others run trials, else FAILED.

    With the tracking server gone this writes nothing: guard_tracking_loss deals with the run."""
    from ml.tracking.runs import tracking_server_reachable

    if not tracking_server_reachable():
        return
    try:
        _end_shared_parent(shared, study, n_trials, failed=True)
    except Exception as exc:  # noqa: BLE001 - the error that stopped the worker is the one to raise
        log.warning("tuning: could not settle the parent run's status after the error: %s", exc)

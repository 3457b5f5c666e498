"""Hyperparameter search with Optuna: each trial a nested MLflow run, unpromising trials pruned
per epoch, the best trial's full config written as `best_config.json` (the seed's config
format, which `mlflow run . -e train -P config=best_config.json` takes as is).

The search is described by a YAML file (configs/tuning.yaml): ranges for learning_rate,
batch_size, dropout_rate, l2_regularization, hidden_units and temperature, the number of
trials, a time budget, the sampler and its seed, the pruner and the objective metric.
Every setting is checked, and every range is tried against the config's own validation,
before any MLflow run starts.

The objective defaults to `val_ndcg_at_10`: NDCG@10 over the whole catalog for each user's
held-out (time-split) likes, items seen in training excluded, with the conventions of
ml.evaluation.metrics. `val_loss` is offered but biased here: the in-batch softmax loss
falls with smaller batches (fewer negatives) and changes scale with the temperature and
the L2 penalty, all of which are searched. Features do not depend on the searched values,
so they are fitted once and shared by all trials.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from ml.config import TowerOpsConfig, config_from_dict, load_config
from ml.logs import get_logger

log = get_logger("training")

TUNABLE: dict[str, str] = {
    "learning_rate": "training.learning_rate",
    "batch_size": "training.batch_size",
    "dropout_rate": "model.dropout_rate",
    "l2_regularization": "model.l2_regularization",
    "hidden_units": "model.hidden_units",
    "temperature": "model.temperature",
}
"""Searchable parameters and the config keys they set."""
_INT_PARAMS = {"batch_size"}
_LIST_PARAMS = {"hidden_units"}
_MINIMIZE = {"val_loss", "val_retrieval_loss", "val_rating_loss"}
_TOP_KEYS = {"n_trials", "timeout_s", "trial_epochs", "objective", "sampler", "pruner", "search_space",
             "enqueue_trials"}
DEFAULT_METRIC = "val_ndcg_at_10"


# ------------------------------------------------------------------- spec
@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: categorical `choices`, or a `low`..`high` range (`log`, `step`)."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def key(self) -> str:
        return TUNABLE[self.name]

    @property
    def categorical(self) -> bool:
        return self.choices is not None

    def _encode(self, value: Any) -> Any:
        return json.dumps(list(value)) if self.name in _LIST_PARAMS else value

    def decode(self, value: Any) -> Any:
        """Optuna's stored value back to the config's (hidden_units are stored as JSON text)."""
        if self.name in _LIST_PARAMS and isinstance(value, str):
            return json.loads(value)
        return value

    def suggest(self, trial: Any) -> Any:
        if self.categorical:
            return self.decode(trial.suggest_categorical(self.name, [self._encode(c) for c in self.choices]))
        if self.name in _INT_PARAMS:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def probe_points(self) -> list[Any]:
        """Values checked against the config before the search: every choice, or the range's
        ends and middle (the config's constraints are intervals, so the ends decide)."""
        if self.categorical:
            return list(self.choices)
        lo, hi = self.low, self.high
        mid = math.sqrt(lo * hi) if self.log and lo > 0 else (lo + hi) / 2
        points = [lo, mid, hi]
        if self.name in _INT_PARAMS:
            points = [int(lo), int(round(mid)), int(hi)]
        return list(dict.fromkeys(points))

    def contains(self, value: Any) -> bool:
        if self.categorical:
            return any(value == c for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.categorical:
            return f"choices {list(self.choices)}"
        return f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "") + (f" step {self.step:g}" if self.step else "")

    def to_dict(self) -> dict[str, Any]:
        if self.categorical:
            return {"choices": [list(c) if isinstance(c, (list, tuple)) else c for c in self.choices]}
        out: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        if self.step:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class TuningSpec:
    """A validated tuning file."""

    space: tuple[ParamSpec, ...]
    n_trials: int = 20
    timeout_s: float | None = None
    trial_epochs: int | None = None
    metric: str = DEFAULT_METRIC
    sampler: str = "tpe"
    seed: int = 42
    sampler_startup_trials: int = 10
    pruner: str = "median"
    pruner_startup_trials: int = 5
    pruner_warmup_steps: int = 1
    pruner_interval_steps: int = 1
    enqueue: tuple[dict[str, Any], ...] = ()
    source: str = "<dict>"

    @property
    def direction(self) -> str:
        return "minimize" if self.metric in _MINIMIZE else "maximize"

    @property
    def ranking_k(self) -> int | None:
        m = _ranking_match(self.metric)
        return int(m.group(2)) if m else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_trials": self.n_trials, "timeout_s": self.timeout_s, "trial_epochs": self.trial_epochs,
            "objective": {"metric": self.metric, "direction": self.direction},
            "sampler": {"type": self.sampler, "seed": self.seed, "n_startup_trials": self.sampler_startup_trials},
            "pruner": {"type": self.pruner, "n_startup_trials": self.pruner_startup_trials,
                       "n_warmup_steps": self.pruner_warmup_steps, "interval_steps": self.pruner_interval_steps},
            "search_space": {p.name: p.to_dict() for p in self.space},
            "enqueue_trials": [dict(e) for e in self.enqueue],
        }


def _ranking_match(metric: str) -> re.Match | None:
    """`val_<ranking metric>_at_<K>` (ml.evaluation.metrics' names), else None."""
    from ml.evaluation.metrics import RANKING_METRICS

    return re.fullmatch(r"val_(" + "|".join(RANKING_METRICS) + r")_at_([1-9][0-9]*)", metric)


def objective_metrics_help() -> str:
    from ml.evaluation.metrics import RANKING_METRICS

    return (", ".join(f"val_{m}_at_K" for m in RANKING_METRICS) + ", val_auc (maximised); "
            + ", ".join(sorted(_MINIMIZE)) + " (minimised)")


def _number(where: str, value: Any, kind: type = float, minimum: float | None = None,
            allow_none: bool = False, exclusive: bool = False) -> Any:
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok:
        raise ValueError(f"{where}={value!r} must be {'an integer' if kind is int else 'a number'}"
                         + (" or null" if allow_none else ""))
    value = kind(value)
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        raise ValueError(f"{where}={value!r} must be {'>' if exclusive else '>='} {minimum:g}")
    return value


def _mapping(where: str, value: Any, allowed: set[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return dict(value)


def _param_spec(name: str, raw: Any, where: str) -> ParamSpec:
    if name not in TUNABLE:
        raise ValueError(f"{where}: {name!r} cannot be searched; searchable parameters: {', '.join(TUNABLE)}")
    raw = _mapping(where, raw, {"choices", "low", "high", "log", "step"})
    if "choices" in raw:
        extra = sorted(set(raw) - {"choices"})
        if extra:
            raise ValueError(f"{where}: give either choices or low/high, not both (also has {extra})")
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}.choices is empty: list at least one value, e.g. choices: "
                             + ("[[512, 256, 128], [256, 128]]" if name in _LIST_PARAMS else "[128, 256, 512]"))
        out = []
        for c in choices:
            if name in _LIST_PARAMS:
                if not isinstance(c, list) or not c or not all(isinstance(u, int) and not isinstance(u, bool) for u in c):
                    raise ValueError(f"{where}.choices: {c!r} must be a non-empty list of integers such as [512, 256, 128]")
                out.append(tuple(c))
            else:
                out.append(_number(f"{where}.choices[]", c, int if name in _INT_PARAMS else float))
        return ParamSpec(name, choices=tuple(list(c) if isinstance(c, tuple) else c for c in out))
    if name in _LIST_PARAMS:
        raise ValueError(f"{where}: hidden_units are searched over choices: choices: [[512, 256, 128], [256, 128]]")
    if "low" not in raw or "high" not in raw:
        raise ValueError(f"{where} needs low and high (or choices), e.g. {{low: 1.0e-4, high: 1.0e-2, log: true}}")
    kind = int if name in _INT_PARAMS else float
    low, high = _number(f"{where}.low", raw["low"], kind), _number(f"{where}.high", raw["high"], kind)
    if low > high:
        raise ValueError(f"{where}: low={low:g} is above high={high:g}: swap them")
    log_scale = raw.get("log", False)
    if not isinstance(log_scale, bool):
        raise ValueError(f"{where}.log={log_scale!r} must be true or false")
    if log_scale and low <= 0:
        raise ValueError(f"{where}: a log range needs low > 0, got low={low:g}; raise low or set log: false")
    step = raw.get("step")
    if step is not None:
        step = _number(f"{where}.step", step, kind, minimum=0, exclusive=True)
        if log_scale:
            raise ValueError(f"{where}: step and log cannot be combined (Optuna samples either); drop one")
    return ParamSpec(name, low=low, high=high, log=log_scale, step=step)


def tuning_spec_from_dict(raw: Mapping[str, Any] | None, source: str = "<dict>") -> TuningSpec:
    """Validate a tuning mapping (as read from configs/tuning.yaml)."""
    raw = _mapping(source, raw, _TOP_KEYS)
    space_raw = raw.get("search_space")
    if not isinstance(space_raw, Mapping) or not space_raw:
        raise ValueError(f"{source}: search_space is missing or empty: add ranges for some of {', '.join(TUNABLE)}")
    space = tuple(_param_spec(str(n), v, f"{source}: search_space.{n}") for n, v in space_raw.items())
    objective = _mapping(f"{source}: objective", raw.get("objective"), {"metric"})
    metric = str(objective.get("metric", DEFAULT_METRIC))
    if metric not in _MINIMIZE and metric != "val_auc" and not _ranking_match(metric):
        raise ValueError(f"{source}: objective.metric={metric!r} is unknown: use {objective_metrics_help()}")
    sampler = _mapping(f"{source}: sampler", raw.get("sampler"), {"type", "seed", "n_startup_trials"})
    pruner = _mapping(f"{source}: pruner", raw.get("pruner"),
                      {"type", "n_startup_trials", "n_warmup_steps", "interval_steps"})
    sampler_type = str(sampler.get("type", "tpe"))
    if sampler_type not in {"tpe", "random"}:
        raise ValueError(f"{source}: sampler.type={sampler_type!r} is unknown: use tpe or random")
    pruner_type = str(pruner.get("type", "median"))
    if pruner_type not in {"median", "none"}:
        raise ValueError(f"{source}: pruner.type={pruner_type!r} is unknown: use median or none")
    by_name = {p.name: p for p in space}
    enqueue_raw = raw.get("enqueue_trials") or []
    if not isinstance(enqueue_raw, list):
        raise ValueError(f"{source}: enqueue_trials must be a list of {{parameter: value}} mappings")
    enqueue = []
    for i, point in enumerate(enqueue_raw):
        where = f"{source}: enqueue_trials[{i}]"
        point = _mapping(where, point, set(by_name))
        for name, value in point.items():
            if not by_name[name].contains(value):
                raise ValueError(f"{where}: {name}={value!r} is outside search_space.{name} "
                                 f"({by_name[name].describe()}): change the point or widen the space")
        enqueue.append(point)
    return TuningSpec(
        space=space,
        n_trials=_number(f"{source}: n_trials", raw.get("n_trials", 20), int, minimum=1),
        timeout_s=_number(f"{source}: timeout_s", raw.get("timeout_s"), float, minimum=0, allow_none=True,
                          exclusive=True),
        trial_epochs=_number(f"{source}: trial_epochs", raw.get("trial_epochs"), int, minimum=1, allow_none=True),
        metric=metric,
        sampler=sampler_type,
        seed=_number(f"{source}: sampler.seed", sampler.get("seed", 42), int),
        sampler_startup_trials=_number(f"{source}: sampler.n_startup_trials", sampler.get("n_startup_trials", 10),
                                       int, minimum=0),
        pruner=pruner_type,
        pruner_startup_trials=_number(f"{source}: pruner.n_startup_trials", pruner.get("n_startup_trials", 5), int,
                                      minimum=0),
        pruner_warmup_steps=_number(f"{source}: pruner.n_warmup_steps", pruner.get("n_warmup_steps", 1), int,
                                    minimum=0),
        pruner_interval_steps=_number(f"{source}: pruner.interval_steps", pruner.get("interval_steps", 1), int,
                                      minimum=1),
        enqueue=tuple(enqueue),
        source=source,
    )


def load_tuning_spec(path: str | Path, n_trials: int | None = None, timeout_s: float | None = None) -> TuningSpec:
    """Read and validate a tuning YAML/JSON file; `n_trials`/`timeout_s` override the file's."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"tuning file {p} does not exist; pass a YAML file like configs/tuning.yaml")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"tuning file {p} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"tuning file {p} must hold a mapping with search_space, n_trials, ...")
    if n_trials is not None:
        raw["n_trials"] = n_trials
    if timeout_s is not None:
        raw["timeout_s"] = timeout_s
    return tuning_spec_from_dict(raw, str(p))


def apply_params(base: TowerOpsConfig, params: Mapping[str, Any], epochs: int | None = None) -> TowerOpsConfig:
    """The base config with searched values set (by parameter name), validated."""
    raw = base.to_dict()
    for name, value in params.items():
        section, key = TUNABLE[name].split(".")
        raw[section][key] = list(value) if isinstance(value, (list, tuple)) else value
    if epochs is not None:
        raw["training"]["epochs"] = epochs
    return config_from_dict(raw, "search point")


def _config_problem(base: TowerOpsConfig, params: Mapping[str, Any]) -> str | None:
    try:
        apply_params(base, params)
    except ValueError as exc:
        lines = [line.strip().removeprefix("- ") for line in str(exc).replace("Invalid config:", "").splitlines()]
        return "; ".join(line for line in lines if line)
    return None


def validate_space(spec: TuningSpec, base: TowerOpsConfig) -> None:
    """Check every choice and every range's ends and middle against the config's validation.

    A parameter whose every probed value is rejected means the space has no valid point;
    a partly rejected one would make trials fail mid-search. Both are errors here.
    """
    problems: list[str] = []
    for p in spec.space:
        points = p.probe_points()
        rejected = {repr(v): _config_problem(base, {p.name: v}) for v in points}
        bad = {v: why for v, why in rejected.items() if why}
        if bad and len(bad) == len(points):
            problems.append(f"search_space.{p.name} ({p.describe()}) has no valid point: "
                            + "; ".join(f"{v}: {why}" for v, why in bad.items()))
        elif bad:
            problems.append(f"search_space.{p.name} ({p.describe()}) includes rejected values: "
                            + "; ".join(f"{v}: {why}" for v, why in bad.items()) + "; narrow the range or drop them")
    if not problems:
        corner = {p.name: p.probe_points()[0] for p in spec.space}
        why = _config_problem(base, corner)
        if why:
            problems.append(f"the search space's first point {corner} is rejected as a whole: {why}")
    for point in spec.enqueue:
        why = _config_problem(base, point)
        if why:
            problems.append(f"enqueue_trials point {point} is rejected: {why}")
    if problems:
        raise ValueError(f"{spec.source}: the search space does not fit the config:\n  - " + "\n  - ".join(problems))


# ------------------------------------------------------------- objective
class ValidationRanking:
    """Full-catalog ranking metrics on the time-split validation likes, computed per epoch.

    User vectors come from training history only (as in the training arrays), items each
    user met in training are excluded, relevant items are the user's held-out likes.
    """

    def __init__(self, trainer: Any, metric: str, k: int, batch_users: int = 2048) -> None:
        p, pl = trainer.prepared, trainer.pipeline
        tr, va = p.split.train, p.split.valid
        n_users, n_items = len(p.user_ids), len(p.item_ids)
        likes = va & (p.labels == 1)
        users = np.unique(p.user_rows[likes])
        if len(users) == 0:
            raise ValueError("the validation split holds no likes, so ranking metrics are undefined: "
                             "use objective.metric: val_loss or more data / a larger training.validation_split")
        history = pl.user_matrix(p.profiles, p.item_vectors, p.user_rows[tr], p.item_rows[tr], p.labels[tr], n_users)
        pos = np.full(n_users, -1, dtype=np.int64)
        pos[users] = np.arange(len(users))
        self.user_features = history[users].astype(np.float32)
        self.item_features = p.item_vectors.astype(np.float32)
        self.rel_indptr, self.rel_items = _csr(pos[p.user_rows[likes]], p.item_rows[likes], len(users))
        seen = tr & (pos[p.user_rows] >= 0)
        self.seen_rows, self.seen_cols = pos[p.user_rows[seen]], p.item_rows[seen]
        self.n_items, self.metric, self.k, self.batch_users = n_items, metric, k, batch_users
        self.name = metric.removeprefix("val_").rsplit("_at_", 1)[0]

    def __call__(self, model: Any) -> float:
        from ml.evaluation.metrics import hits_from_csr, ranking_metrics, top_k_from_scores

        ue = _embed(model.user_tower, self.user_features)
        ie = _embed(model.item_tower, self.item_features)
        values = []
        for start in range(0, len(ue), self.batch_users):
            stop = min(start + self.batch_users, len(ue))
            scores = ue[start:stop] @ ie.T
            sel = (self.seen_rows >= start) & (self.seen_rows < stop)
            scores[self.seen_rows[sel] - start, self.seen_cols[sel]] = -np.inf
            top = top_k_from_scores(scores, self.k)
            indptr = self.rel_indptr[start:stop + 1] - self.rel_indptr[start]
            items = self.rel_items[self.rel_indptr[start]:self.rel_indptr[stop]]
            hits = hits_from_csr(top, indptr, items, self.n_items)
            per_user = ranking_metrics(hits, np.diff(indptr), [self.k], [self.name])
            values.append(next(iter(per_user.values())))
        return float(np.nanmean(np.concatenate(values)))


def _csr(rows: np.ndarray, cols: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    keep = np.r_[True, (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])] if len(rows) else np.zeros(0, bool)
    rows, cols = rows[keep], cols[keep]
    indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=n_rows))].astype(np.int64)
    return indptr, cols.astype(np.int64)


def _embed(tower: Any, features: np.ndarray, batch: int = 8192) -> np.ndarray:
    return np.concatenate([np.asarray(tower(features[i:i + batch], training=False)) for i in range(0, len(features), batch)])


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


def run_tuning(
    data: Any,
    tuning_path: str | Path = "configs/tuning.yaml",
    config_path: str | Path | None = "configs/training.json",
    overrides: Mapping[str, Any] | None = None,
    n_trials: int | None = None,
    timeout_s: float | None = None,
    out: str | Path = "best_config.json",
    run_name: str = "tune",
    experiment: str | None = None,
) -> TuneResult:
    """Validate everything, then run the Optuna study inside an MLflow run (trials nested)."""
    import mlflow
    import optuna

    from ml.data.fingerprint import dataset_fingerprint
    from ml.data.loaders import load_dataset
    from ml.data.schema import Dataset
    from ml.distribute import plan_distribution, start_distribution
    from ml.tracking import guard_tracking_loss, mlflow_epoch_callback, start_run
    from ml.training import TwoTowerTrainer

    # ---- everything that can be wrong in the input fails here, before any run
    spec = load_tuning_spec(tuning_path, n_trials=n_trials, timeout_s=timeout_s)
    base = load_config(config_path, overrides)
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
    dataset = data if isinstance(data, Dataset) else load_dataset(str(data))
    fingerprint = dataset_fingerprint(dataset)
    distribution = start_distribution(plan)
    scratch = Path(tempfile.mkdtemp(prefix="towerops-tune-"))
    shared = TwoTowerTrainer(scratch / "features", base, distribution=distribution)
    prepared = shared.prepare(dataset)
    x_train, y_train, valid = shared.training_arrays(prepared)
    if valid is None:
        raise ValueError("the time split left no validation rows (every user has too few interactions): "
                         "raise training.validation_split or use more data")
    ranking = ValidationRanking(shared, spec.metric, spec.ranking_k) if spec.ranking_k else None
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
            mlflow.set_tags({"towerops.data_hash": fingerprint["hash"], **distribution.tags()})
            mlflow.log_dict(spec.to_dict(), "tuning.json")
            mlflow.log_dict(base.to_dict(), "base_config.json")
            study = _make_study(spec, f"towerops-{parent_id}")

            def objective(trial: Any) -> float:
                import keras

                params = {p.name: p.suggest(trial) for p in spec.space}
                cfg = apply_params(base, params, epochs=spec.trial_epochs)
                trial_dir = scratch / f"trial-{trial.number}"
                with start_run(run_name=f"trial-{trial.number}", nested=True,
                               tags={"towerops.step": "tune-trial", "optuna.trial": str(trial.number)}) as child:
                    child_id = child.info.run_id
                    trial.set_user_attr("mlflow_run_id", child_id)
                    mlflow.log_params({k: json.dumps(v) if isinstance(v, list) else v
                                       for k, v in cfg.flat_params().items()})
                    mlflow.log_param("optuna.trial", trial.number)
                    callbacks, values = _objective_callbacks(trial, spec.metric, ranking,
                                                             mlflow_epoch_callback(child_id))
                    trainer = TwoTowerTrainer(trial_dir, cfg, callbacks=callbacks, distribution=distribution)
                    trainer.pipeline, trainer.prepared = shared.pipeline, prepared
                    pruned: optuna.TrialPruned | None = None
                    try:
                        trainer.fit(x_train, y_train, valid)
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

            study.optimize(objective, n_trials=spec.n_trials, timeout=spec.timeout_s, gc_after_trial=True)
            states = {s.name.lower(): sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
            mlflow.log_metrics({f"n_trials_{k}": float(states[k]) for k in ("complete", "pruned", "fail")})
            states = {k: v for k, v in states.items() if v}
            if not states.get("complete"):
                raise ValueError(f"no trial completed ({states}): see the trial runs; widen timeout_s, lower "
                                 "pruner.n_startup_trials or check the data")
            best = study.best_trial
            by_name = {p.name: p for p in spec.space}
            best_params = {k: by_name[k].decode(v) for k, v in best.params.items()}
            best_config = apply_params(base, best_params)
            best_json = json.dumps(best_config.to_dict(), indent=2) + "\n"
            out_path.write_text(best_json, encoding="utf-8")
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
            log.info("tuning finished: best trial %d %s=%.4f %s; wrote %s", best.number, spec.metric, best.value,
                     best_params, out_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return TuneResult(run_id=parent_id, best_value=float(best.value), best_params=best_params, best_trial=best.number,
                      best_run_id=best_run, best_config_path=out_path, metric=spec.metric, states=states)


__all__: Sequence[str] = ("TUNABLE", "ParamSpec", "TuningSpec", "TuneResult", "ValidationRanking", "apply_params",
                          "load_tuning_spec", "run_tuning", "tuning_spec_from_dict", "validate_space")

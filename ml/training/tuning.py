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

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import Field, field_validator, model_validator

from ml.config import (
    ConfigError,
    KeyProblem,
    StrictModel,
    TowerOpsConfig,
    config_from_dict,
    read_config_file,
    validate_config,
)
from ml.evaluation.metrics import validation_ranking_metric
from ml.logs import get_logger
from ml.secrets import describe_secret

log = get_logger("training")

TUNABLE: dict[str, str] = {
    "learning_rate": "training.learning_rate",
    "batch_size": "training.batch_size",
    "dropout_rate": "model.dropout_rate",
    "l2_regularization": "model.l2_regularization",
    "hidden_units": "model.hidden_units",
    "temperature": "model.temperature",
    "logq_weight": "model.logq_weight",
    "id_embedding_dim": "model.id_embedding_dim",
    "id_dropout": "model.id_dropout",
    "history_dropout": "model.history_dropout",
}
"""Searchable parameters and the config keys they set."""
_INT_PARAMS = {"batch_size", "id_embedding_dim"}
_LIST_PARAMS = {"hidden_units"}
_MINIMIZE = {"val_loss", "val_retrieval_loss", "val_rating_loss"}
DEFAULT_METRIC = "val_ndcg_at_10"
DEFAULT_STUDY_NAME = "towerops-tune"
"""The study name workers share when `--storage` is given without `--study-name`."""
DEFAULT_HEARTBEAT_INTERVAL_S = 30
DEFAULT_GRACE_PERIOD_S = 120
"""Shared studies: a worker records a heartbeat for its running trial every 30 s; a trial with none for
120 s is failed as stale (Optuna's heartbeat), so a dead worker's trial stops counting toward n_trials."""


def check_storage_ref(value: str | None) -> str | None:
    """A storage URL as written in a file: env:VAR, or an SQLAlchemy URL without a password.

    Why: tuning files and towerops.yaml are committed and shown by `towerops config show`;
    the password of a shared PostgreSQL belongs in the environment."""
    from ml.secrets import is_secret_ref, mask_dsn

    if value is None or is_secret_ref(value):
        return value
    if mask_dsn(value) != value:  # the message never repeats the value
        raise KeyProblem("holds a password: never write secrets in a config file; put the storage URL in an "
                         "environment variable and write env:VAR here (e.g. env:TOWEROPS_TUNING_STORAGE)")
    if "://" not in value:
        raise KeyProblem("must be an SQLAlchemy URL such as postgresql://user@host:5432/optuna (or env:VAR naming one)")
    return value


# ------------------------------------------------------------------- spec
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
    "batch_size": {"choices": [128, 256, 512]},
    "dropout_rate": {"low": 0.0, "high": 0.5},
    "l2_regularization": {"low": 1.0e-6, "high": 1.0e-1, "log": True},
    "hidden_units": {"choices": [[256, 128], [512, 256, 128], [1024, 512, 256]]},
    "temperature": {"low": 0.03, "high": 0.5, "log": True},
    "logq_weight": {"low": 0.0, "high": 2.5},
    "history_dropout": {"low": 0.0, "high": 0.8},
}
"""The search space when a tuning file gives none (configs/tuning.yaml spells it out)."""
SEED_POINT: dict[str, Any] = {"learning_rate": 0.001, "batch_size": 256, "dropout_rate": 0.2,
                              "l2_regularization": 0.01, "hidden_units": [512, 256, 128], "temperature": 0.1,
                              "logq_weight": 1.5, "history_dropout": 0.5}
"""The seed's defaults and the ID stage's, tried first when the default search space is searched."""


class ParamSpec(StrictModel):
    """One searched parameter: categorical `choices`, or a `low`..`high` range (`log`, `step`)."""

    name: str = Field(exclude=True)  # the key under search_space, set by TuningFile
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "ParamSpec":
        if self.choices is not None:
            also = [k for k in ("low", "high", "log", "step") if k in self.model_fields_set]
            if also:
                raise ValueError(f"give either choices or low/high, not both (also has {also})")
            if not self.choices:
                raise KeyProblem("is empty: list at least one value, e.g. choices: "
                                 + ("[[512, 256, 128], [256, 128]]" if self.name in _LIST_PARAMS
                                    else "[128, 256, 512]"), "choices")
            self.choices = [self._choice(c) for c in self.choices]
            return self
        if self.name in _LIST_PARAMS:
            raise ValueError("hidden_units are searched over choices: choices: [[512, 256, 128], [256, 128]]")
        if self.low is None or self.high is None:
            raise ValueError("needs low and high (or choices), e.g. {low: 1.0e-4, high: 1.0e-2, log: true}")
        if self.name in _INT_PARAMS:
            for key in ("low", "high", "step"):
                value = getattr(self, key)
                if value is not None and not float(value).is_integer():
                    raise KeyProblem(f"must be an integer for {self.name}, got {value:g}", key)
                setattr(self, key, None if value is None else int(value))
        if self.low > self.high:
            raise ValueError(f"low={self.low:g} is above high={self.high:g}: swap them")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got low={self.low:g}; raise low or set log: false")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot be combined (Optuna samples either); drop one")
        return self

    def _choice(self, c: Any) -> Any:
        if self.name in _LIST_PARAMS:
            if not isinstance(c, list) or not c or not all(isinstance(u, int) and not isinstance(u, bool) for u in c):
                raise KeyProblem(f"entry {c!r} must be a non-empty list of integers such as [512, 256, 128]",
                                 "choices")
            return list(c)
        if isinstance(c, bool) or not isinstance(c, (int, float)):
            raise KeyProblem(f"entry {c!r} must be a number", "choices")
        if self.name in _INT_PARAMS:
            if not float(c).is_integer():
                raise KeyProblem(f"entry {c!r} must be an integer", "choices")
            return int(c)
        return float(c)

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


class ObjectiveSection(StrictModel):
    metric: str = DEFAULT_METRIC

    @field_validator("metric")
    @classmethod
    def _known(cls, metric: str) -> str:
        if metric not in _MINIMIZE and metric != "val_auc" and not validation_ranking_metric(metric):
            raise ValueError(f"is unknown: use {objective_metrics_help()}")
        return metric


class SamplerSection(StrictModel):
    type: Literal["tpe", "random"] = "tpe"
    seed: int = 42
    n_startup_trials: int = Field(10, ge=0, description="random trials before TPE models the space")


class PrunerSection(StrictModel):
    type: Literal["median", "none"] = "median"
    n_startup_trials: int = Field(5, ge=0, description="completed trials before any trial is pruned")
    n_warmup_steps: int = Field(2, ge=0, description="epochs a trial always runs before it can be pruned")
    interval_steps: int = Field(1, ge=1)


class TuningFile(StrictModel):
    """configs/tuning.yaml: the study's settings and search space; missing keys take these defaults."""

    n_trials: int = Field(30, ge=1)
    timeout_s: float | None = Field(None, gt=0, description="stop starting new trials after this many seconds")
    trial_epochs: int | None = Field(20, ge=1, description="epochs per trial; best_config keeps the base's epochs")
    objective: ObjectiveSection = Field(default_factory=ObjectiveSection)
    sampler: SamplerSection = Field(default_factory=SamplerSection)
    pruner: PrunerSection = Field(default_factory=PrunerSection)
    search_space: dict[str, ParamSpec] = Field(
        default_factory=lambda: {n: ParamSpec(name=n, **v) for n, v in copy.deepcopy(DEFAULT_SPACE).items()})
    enqueue_trials: list[dict[str, Any]] | None = Field(
        None, description="points tried first; default: the seed's point when the default space is searched")
    storage: str | None = Field(None, description="Optuna RDB storage shared by workers on several hosts, e.g. "
                                                  "env:TOWEROPS_TUNING_STORAGE naming a postgresql:// URL")
    study_name: str | None = Field(None, min_length=1, max_length=200,
                                   description=f"the study every worker joins (default {DEFAULT_STUDY_NAME!r})")
    heartbeat_interval_s: int = Field(DEFAULT_HEARTBEAT_INTERVAL_S, ge=1,
                                      description="shared studies: seconds between a running trial's heartbeats")
    grace_period_s: int = Field(DEFAULT_GRACE_PERIOD_S, ge=1,
                                description="shared studies: a running trial without a heartbeat for this long is "
                                            "failed (its worker died) and no longer counts toward n_trials")

    @field_validator("storage")
    @classmethod
    def _storage_secret_free(cls, value: str | None) -> str | None:
        return check_storage_ref(value)

    @field_validator("search_space", mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        if not value:
            raise KeyProblem(f"is missing or empty: add ranges for some of {', '.join(TUNABLE)}")
        if not isinstance(value, Mapping):
            return value
        unknown = [str(n) for n in value if n not in TUNABLE]
        if unknown:
            raise ValueError(f"{unknown[0]!r} cannot be searched; searchable parameters: {', '.join(TUNABLE)}")
        return {n: {**v, "name": n} if isinstance(v, Mapping) else v for n, v in value.items()}

    @model_validator(mode="after")
    def _grace_above_interval(self) -> "TuningFile":
        if self.grace_period_s <= self.heartbeat_interval_s:
            raise KeyProblem(f"grace_period_s={self.grace_period_s} must be above heartbeat_interval_s="
                             f"{self.heartbeat_interval_s} (a few heartbeats, e.g. 4x), or trials still running "
                             "would be failed as stale")
        return self

    @model_validator(mode="after")
    def _enqueue_in_space(self) -> "TuningFile":
        if self.enqueue_trials is None:
            self.enqueue_trials = [] if "search_space" in self.model_fields_set else [dict(SEED_POINT)]
        for i, point in enumerate(self.enqueue_trials):
            for name, value in point.items():
                spec = self.search_space.get(name)
                if spec is None:
                    raise ValueError(f"enqueue_trials.{i}.{name} is not searched: use parameters of search_space "
                                     f"({', '.join(self.search_space)}) or add a range for it")
                if not spec.contains(value):
                    raise ValueError(f"enqueue_trials.{i}: {name}={value!r} is outside search_space.{name} "
                                     f"({spec.describe()}): change the point or widen the space")
        return self


@dataclass(frozen=True)
class TuningSpec:
    """A validated tuning file, flattened for the study."""

    space: tuple[ParamSpec, ...]
    n_trials: int = 30
    timeout_s: float | None = None
    trial_epochs: int | None = 20
    metric: str = DEFAULT_METRIC
    sampler: str = "tpe"
    seed: int = 42
    sampler_startup_trials: int = 10
    pruner: str = "median"
    pruner_startup_trials: int = 5
    pruner_warmup_steps: int = 2
    pruner_interval_steps: int = 1
    enqueue: tuple[dict[str, Any], ...] = ()
    source: str = "<dict>"
    storage: str | None = None      # as written (env:VAR or a URL); resolved only when the study opens
    study_name: str | None = None
    heartbeat_interval_s: int = DEFAULT_HEARTBEAT_INTERVAL_S
    grace_period_s: int = DEFAULT_GRACE_PERIOD_S

    @classmethod
    def from_file(cls, f: TuningFile, source: str = "<dict>") -> "TuningSpec":
        return cls(space=tuple(f.search_space.values()), n_trials=f.n_trials, timeout_s=f.timeout_s,
                   trial_epochs=f.trial_epochs, metric=f.objective.metric, sampler=f.sampler.type,
                   seed=f.sampler.seed, sampler_startup_trials=f.sampler.n_startup_trials, pruner=f.pruner.type,
                   pruner_startup_trials=f.pruner.n_startup_trials, pruner_warmup_steps=f.pruner.n_warmup_steps,
                   pruner_interval_steps=f.pruner.interval_steps, enqueue=tuple(f.enqueue_trials or ()),
                   source=source, storage=f.storage, study_name=f.study_name,
                   heartbeat_interval_s=f.heartbeat_interval_s, grace_period_s=f.grace_period_s)

    @property
    def direction(self) -> str:
        return "minimize" if self.metric in _MINIMIZE else "maximize"

    @property
    def ranking_k(self) -> int | None:
        m = validation_ranking_metric(self.metric)
        return m[1] if m else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_trials": self.n_trials, "timeout_s": self.timeout_s, "trial_epochs": self.trial_epochs,
            "objective": {"metric": self.metric, "direction": self.direction},
            "sampler": {"type": self.sampler, "seed": self.seed, "n_startup_trials": self.sampler_startup_trials},
            "pruner": {"type": self.pruner, "n_startup_trials": self.pruner_startup_trials,
                       "n_warmup_steps": self.pruner_warmup_steps, "interval_steps": self.pruner_interval_steps},
            "search_space": {p.name: p.to_dict() for p in self.space},
            "enqueue_trials": [dict(e) for e in self.enqueue],
            **({"storage": describe_secret(self.storage)} if self.storage else {}),
            **({"study_name": self.study_name} if self.study_name else {}),
            **({"heartbeat_interval_s": self.heartbeat_interval_s, "grace_period_s": self.grace_period_s}
               if self.storage else {}),
        }

    def study_key(self) -> dict[str, Any]:
        """What every worker of one shared study must agree on (not the per-worker time budget or storage)."""
        key = self.to_dict()
        for k in ("timeout_s", "storage", "study_name", "heartbeat_interval_s", "grace_period_s"):
            key.pop(k, None)
        return key


def objective_metrics_help() -> str:
    from ml.evaluation.metrics import RANKING_METRICS

    return (", ".join(f"val_{m}_at_K" for m in RANKING_METRICS) + ", val_auc (maximised); "
            + ", ".join(sorted(_MINIMIZE)) + " (minimised)")


def tuning_spec_from_dict(raw: Mapping[str, Any] | None, source: str = "<dict>") -> TuningSpec:
    """Validate a tuning mapping (as read from configs/tuning.yaml)."""
    return TuningSpec.from_file(validate_config(TuningFile, raw, source), source)


def load_tuning_spec(path: str | Path, n_trials: int | None = None, timeout_s: float | None = None) -> TuningSpec:
    """Read and validate a tuning YAML/JSON file; `n_trials`/`timeout_s` override the file's."""
    raw = read_config_file(path, "tuning file", "a mapping with search_space, n_trials, ...")
    if n_trials is not None:
        raw["n_trials"] = n_trials
    if timeout_s is not None:
        raw["timeout_s"] = timeout_s
    return tuning_spec_from_dict(raw, str(path))


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
    except ConfigError as exc:
        return "; ".join(exc.problems)
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

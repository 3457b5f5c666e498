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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from ml.config import TowerOpsConfig, config_from_dict
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

"""Typed configuration: the training config (`model`, `training`, `features`) and the shared
machinery every config file of the project uses (pydantic v2, unknown keys rejected).

Configs are JSON or YAML files; MLproject parameters and `--set` override single keys with
dotted paths (`training.epochs=5`), strings coerced through the model. A bad file fails with
one message naming the file, each bad key's path, its value and the fix (allowed keys, a
"did you mean", the allowed range), never a pydantic traceback. The defaults live here in
code; the files under `configs/` document them.
"""

from __future__ import annotations

import copy
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ml.settings import explain as _why

M = TypeVar("M", bound=BaseModel)


class KeyProblem(ValueError):
    """Raised inside a model's validator for a problem it words itself: shown as
    `<path of the model>[.key] <message>`, e.g. `search_space.batch_size.choices is empty: ...`."""

    def __init__(self, message: str, key: str | None = None) -> None:
        self.key = key
        super().__init__(message)


class ConfigError(ValueError):
    """A config that does not validate; `problems` holds one line per bad key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"Invalid config {source}:\n  - " + "\n  - ".join(problems))


def _accepts(annotation: Any, kinds: tuple[type, ...]) -> bool:
    """Whether a field's annotation admits a value of one of `kinds` (through Optional, Literal, ...)."""
    if annotation in kinds or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return any(isinstance(a, kinds) for a in typing.get_args(annotation))
    if origin is Annotated:
        return _accepts(typing.get_args(annotation)[0], kinds)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, kinds) for a in typing.get_args(annotation))
    return isinstance(annotation, type) and issubclass(annotation, kinds) and annotation is not bool


def _parse_text(value: str) -> Any:
    """A text value (`--set`, environment) as YAML: "5" -> 5, "[16, 8]" -> [16, 8]; unparsable text stays text."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


class StrictModel(BaseModel):
    """Base of every config model: unknown keys rejected; text values (`--set`, env) parsed as YAML.

    `"5"` becomes 5 and `"[16, 8]"` a list for non-text fields; booleans are not numbers.
    """

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _parse_text(cls, value: Any, info: Any) -> Any:
        field = cls.model_fields.get(info.field_name)
        if field is None:
            return value
        if value is None and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            return {}  # an empty YAML section (`sampler:`) takes the section's defaults
        if isinstance(value, str) and not _accepts(field.annotation, (str,)):
            return _parse_text(value)
        if isinstance(value, bool):
            if not _accepts(field.annotation, (bool,)) and _accepts(field.annotation, (int, float)):
                raise ValueError("must be a number, not true/false")
        elif isinstance(value, int) and _accepts(field.annotation, (float,)) \
                and not _accepts(field.annotation, (int,)):
            return float(value)  # shown as 5.0 in messages and dumps, like the value the model holds
        return value


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _locate(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, Any]:
    """(the model class holding the last key of `loc`, the last field met along `loc`);
    list indices and dict keys are stepped over."""
    current: type[BaseModel] | None = model
    holder: type[BaseModel] | None = model
    last = None
    for part in loc:
        holder = current
        if current is not None and isinstance(part, str) and part in current.model_fields:
            last = current.model_fields[part]
            current = _inner_model(last.annotation)
    return holder, last


def describe_errors(exc: ValidationError, model: type[BaseModel], *, root: str = "") -> list[str]:
    """One plain line per pydantic error: key path, value, what is wrong and the fix."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path = ".".join(str(p) for p in (root, *loc) if p != "")
        holder, field = _locate(model, loc)
        if err["type"] == "extra_forbidden" and loc:
            allowed = sorted(k for k, f in holder.model_fields.items() if not f.exclude) if holder else []
            section = not loc[:-1] and not root and all(_inner_model(f.annotation) for f in model.model_fields.values())
            guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            where = ".".join(str(p) for p in (root, *loc[:-1]) if p != "")
            fix = f"did you mean {parent_path(path) + guess[0]!r}? " if guess else "remove it; "
            fix += f"allowed {'sections' if section else 'keys' + (' of ' + where if where else '')}: "
            lines.append(f"unknown {'config section ' + repr(loc[-1]) if section else 'key ' + path}: "
                         f"{fix}{', '.join(allowed) or 'none'}")
            continue
        why = _why(err)
        extra = field.json_schema_extra if field is not None and isinstance(field.json_schema_extra, dict) else {}
        if extra.get("hint"):
            why = f"{why} ({extra['hint']})"
        problem = (err.get("ctx") or {}).get("error")
        if isinstance(problem, KeyProblem):
            where = ".".join(p for p in (path, problem.key) if p)
            lines.append(where + ("" if why.startswith("=") or not where else " ") + why)
        elif not loc or err["type"] == "value_error" and isinstance(err.get("input"), dict):
            lines.append(f"{path}: {why}" if path else why)
        elif err["type"] == "missing":
            lines.append(f"{path} {why}")
        else:
            lines.append(f"{path}={err['input']!r} {why}")
    return lines


def parent_path(path: str) -> str:
    """`a.b.c` -> `a.b.` (the prefix a "did you mean" suggestion keeps)."""
    return path.rsplit(".", 1)[0] + "." if "." in path else ""


def validate_config(model: type[M], raw: Mapping[str, Any] | None, source: str, *, root: str = "") -> M:
    """`model.model_validate(raw)`, a bad value raising ConfigError with one line per problem."""
    try:
        return model.model_validate(dict(raw or {}))
    except ValidationError as exc:
        raise ConfigError(source, describe_errors(exc, model, root=root)) from None


def read_config_file(path: str | Path, what: str = "config file",
                     expected: str = "a mapping of settings") -> dict[str, Any]:
    """The mapping in a JSON or YAML file; clear errors for a missing, malformed or non-mapping file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} does not exist; pass an existing JSON or YAML file")
    kind = "JSON" if p.suffix == ".json" else "YAML"
    text = p.read_text(encoding="utf-8")
    try:
        raw = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{what} {p} is not valid {kind}: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{what} {p} must hold {expected}, not a {type(raw).__name__}")
    return raw


def load_config_file(model: type[M], path: str | Path, what: str = "config file",
                     expected: str = "a mapping of settings") -> M:
    """Read and validate one config file into its model."""
    return validate_config(model, read_config_file(path, what, expected), str(path))


# ---- the training config (configs/training.json) ----------------------------------------

PositiveInt = Annotated[int, Field(gt=0)]


class ModelConfig(StrictModel):
    user_embedding_dim: int = Field(768, gt=0)
    item_embedding_dim: int = Field(768, gt=0)
    hidden_units: list[PositiveInt] = Field(default_factory=lambda: [512, 256, 128], min_length=1,
                                            json_schema_extra={"hint": "e.g. [512, 256, 128]"})
    dropout_rate: float = 0.2
    l2_regularization: float = Field(0.01, ge=0, description="AdamW decoupled weight decay (ml.model.optim), "
                                     "not an L2 term in the loss")
    temperature: float = Field(0.1, gt=0, description="softmax temperature over cosine scores")
    logq_weight: float = Field(
        1.5, ge=0, description="weight of the sampling-bias (logQ) correction in the in-batch softmax: 1 makes the "
        "batch softmax estimate the full one; above 1 the cosine also learns less popularity, which ranks the items "
        "users go on to like better (bench/quality.py, validation part); 0 turns the correction off")
    id_embedding_dim: int = Field(128, ge=0, description="width of the learned item-id and user-id vectors "
                                  "(ml.model.towers.IdStage); 0 = content-only towers")
    history_length: int = Field(50, ge=1, description="liked and noped item ids pooled per training example "
                                "(a random sample when the history is longer)")
    id_dropout: float = Field(0.1, description="share of own ids sent to the OOV row while training, so cold "
                              "items and users have a learned fallback")
    user_id_vector: bool = Field(False, description="give the user core a learned user-id vector next to the pooled "
                                 "history (off: it learns from one user's few swipes, starts as noise, and the edge "
                                 "never has it; NDCG@10 was lower with it in bench/quality.py)")
    history_dropout: float = Field(0.5, description="share of each training row's history ids dropped before "
                                   "pooling (denoising; the user cannot be memorised by a fixed history)")
    id_learning_rate_scale: float = Field(1.0, gt=0, description="how many times faster than the towers' Dense "
                                          "layers the ID vectors learn (the tables are stored divided by it)")

    @field_validator("hidden_units", mode="before")
    @classmethod
    def _one_layer(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = _parse_text(value)
        return [value] if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("dropout_rate", "id_dropout", "history_dropout")
    @classmethod
    def _unit_interval(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError("must be in [0, 1)")
        return value


class TrainingConfig(StrictModel):
    batch_size: int = Field(256, ge=2, json_schema_extra={"hint": "in-batch negatives need a batch"})
    epochs: int = Field(100, ge=1)
    learning_rate: float = Field(0.001, gt=0)
    patience: int = Field(10, ge=0)
    early_stopping_metric: str = Field(
        "val_loss", description="what early stopping and the best-weights checkpoint watch on the validation part: "
        "val_loss (the in-batch softmax loss, minimised) or a ranking metric val_<metric>_at_<k> such as "
        "val_ndcg_at_10 (full-catalog ranking of the validation likes after each epoch, maximised)")
    validation_split: float = 0.2
    test_split: float = Field(0.1, description="each user's newest share held out for offline evaluation and the "
                              "gate; never read by training")
    bce_weight: float = Field(0.0, ge=0, description="weight of the explicit like/nope loss next to the in-batch "
                              "softmax; 0 by default: nopes are shown, i.e. taste-targeted, items, and pushing "
                              "them away cost NDCG@10 in bench/quality.py")
    seed: int = 42
    distribute_strategy: Literal["one_device", "mirrored", "multi_worker_mirrored"] = "one_device"
    jit_compile: bool = False
    mixed_precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = Field(
        "auto", description="dtype policy of the training graph: auto = mixed_float16 when TensorFlow sees a GPU "
        "(float16 compute, float32 variables, loss scaling), float32 on the CPU; the exported model is float32")
    steps_per_execution: int = Field(16, ge=1, description="training steps per call into the compiled graph: "
                                     "fewer Python round trips; callbacks run per epoch, so they see no difference")

    @field_validator("validation_split", "test_split")
    @classmethod
    def _unit_interval(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError("must be in [0, 1)")
        return value

    @field_validator("early_stopping_metric")
    @classmethod
    def _stopping_metric(cls, value: str) -> str:
        import re

        if value != "val_loss" and not re.fullmatch(r"val_[a-z_]+_at_[1-9][0-9]*", value):
            raise ValueError("must be val_loss or a validation ranking metric val_<metric>_at_<k>, e.g. val_ndcg_at_10")
        return value

    @model_validator(mode="after")
    def _something_to_train(self) -> "TrainingConfig":
        if self.validation_split + self.test_split >= 1.0:
            raise ValueError(f"validation_split={self.validation_split} + test_split={self.test_split} leave nothing "
                             "to train on: keep their sum below 1 (defaults 0.2 and 0.1)")
        return self


class FeatureConfig(StrictModel):
    text_dim: int = Field(64, ge=1, description="TruncatedSVD components of the TF-IDF of title + description")
    text_encoder: str = "tfidf_svd"  # checked against ml.preprocessing's registry when the pipeline is built
    max_tfidf_features: int = Field(20000, ge=1)
    max_tags: int = Field(200, ge=0)
    max_makers: int = Field(100, ge=0)
    max_profile_categories: int = Field(50, ge=0)
    standardize: bool = Field(True, description="tower inputs to mean 0, variance 1 per column over the training "
                              "data (ml.preprocessing.features.FeaturePipeline.fit_scaling)")


FiniteNumber = Annotated[float, Field(allow_inf_nan=False)]


class DataConfig(StrictModel):
    """How interactions become likes (`ml.data.ratings`): a rating scale and the like threshold on it."""

    rating_scale: str | list[float] = Field(
        "auto", json_schema_extra={"hint": "auto (infer from the ratings), 0-1, 1-5, 1-10 or [low, high]"})
    like_threshold: FiniteNumber | None = Field(
        None, json_schema_extra={"hint": "the rating from which a swipe is a like; default 4 of 5 stars "
                                         "(0.8 x the top of the scale), 0.5 on 0-1"})

    @field_validator("rating_scale", mode="before")
    @classmethod
    def _scale(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().startswith("["):
            value = yaml.safe_load(value)
        if isinstance(value, str) and value.strip().lower() in ("auto", "0-1", "1-5", "1-10"):
            return value.strip().lower()
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) and value[0] < value[1]:
            return [float(v) for v in value]
        raise ValueError("must be auto, 0-1, 1-5, 1-10 or [low, high] with low < high, e.g. [0, 100]")


class TowerOpsConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    data: DataConfig = Field(default_factory=DataConfig)

    @model_validator(mode="after")
    def _towers_match(self) -> "TowerOpsConfig":
        m = self.model
        if m.user_embedding_dim != m.item_embedding_dim:
            raise ValueError(
                f"model.user_embedding_dim={m.user_embedding_dim} differs from model.item_embedding_dim="
                f"{m.item_embedding_dim}: the towers' outputs are compared by dot product, set both to the same value"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="python")

    def flat_params(self) -> dict[str, Any]:
        """`section.key -> value`, as logged to MLflow."""
        out: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            for key, value in values.items():
                out[f"{section}.{key}"] = value
        return out

    @property
    def embedding_dim(self) -> int:
        return self.model.item_embedding_dim


def config_from_dict(raw: Mapping[str, Any] | None = None, source: str = "<dict>") -> TowerOpsConfig:
    """Build a validated config; missing keys take the seed's defaults."""
    return validate_config(TowerOpsConfig, copy.deepcopy(dict(raw or {})), source)


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of `raw` with `section.key -> value` overrides set (empty values skipped)."""
    out = copy.deepcopy(dict(raw))
    for dotted, value in (overrides or {}).items():
        if value is None or value == "":
            continue
        if "." not in dotted:
            raise ValueError(f"override {dotted!r} must be 'section.key', e.g. training.epochs")
        section, key = dotted.split(".", 1)
        if out.get(section) is None:
            out[section] = {}
        if not isinstance(out[section], dict):
            raise ValueError(f"override {dotted!r}: {section} is not a section of the config")
        out[section][key] = value
    return out


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TowerOpsConfig:
    """Read a JSON/YAML config file (or the defaults) and apply dotted overrides."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path:
        raw = read_config_file(path, "config file", "a mapping with 'model' and 'training' sections")
        source = str(path)
    if any(v not in (None, "") for v in (overrides or {}).values()):
        source += " with overrides " + ", ".join(k for k, v in (overrides or {}).items() if v not in (None, ""))
    return config_from_dict(apply_overrides(raw, overrides), source)


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`["training.epochs=5", ...]` -> `{"training.epochs": "5"}`."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value, e.g. training.epochs=5")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out

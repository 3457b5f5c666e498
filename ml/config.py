"""Training configuration in the seed's format (`model` and `training` sections).

Configs are JSON or YAML files; MLproject parameters override single keys with
dotted paths (`training.epochs=5`). Unknown keys and bad values are rejected with
a message naming the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml


@dataclass
class ModelConfig:
    user_embedding_dim: int = 768
    item_embedding_dim: int = 768
    hidden_units: list[int] = field(default_factory=lambda: [512, 256, 128])
    dropout_rate: float = 0.2
    l2_regularization: float = 0.01
    temperature: float = 0.1  # softmax temperature over cosine scores


@dataclass
class TrainingConfig:
    batch_size: int = 256
    epochs: int = 100
    learning_rate: float = 0.001
    patience: int = 10
    validation_split: float = 0.2
    bce_weight: float = 1.0  # weight of the explicit like/nope loss next to in-batch softmax
    seed: int = 42
    distribute_strategy: str = "one_device"  # one_device | mirrored | multi_worker_mirrored
    jit_compile: bool = False


@dataclass
class FeatureConfig:
    text_dim: int = 64           # TruncatedSVD components of the TF-IDF of title + description
    text_encoder: str = "tfidf_svd"
    max_tfidf_features: int = 20000
    max_tags: int = 200
    max_makers: int = 100
    max_profile_categories: int = 50


@dataclass
class TowerOpsConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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

    def validate(self) -> "TowerOpsConfig":
        m, t, f = self.model, self.training, self.features
        problems: list[str] = []
        if m.user_embedding_dim != m.item_embedding_dim:
            problems.append(
                f"model.user_embedding_dim={m.user_embedding_dim} differs from model.item_embedding_dim="
                f"{m.item_embedding_dim}: the towers' outputs are compared by dot product, set both to the same value"
            )
        if m.item_embedding_dim <= 0:
            problems.append(f"model.item_embedding_dim={m.item_embedding_dim} must be a positive integer")
        if not m.hidden_units or any((not isinstance(h, int)) or h <= 0 for h in m.hidden_units):
            problems.append(f"model.hidden_units={m.hidden_units!r} must be a non-empty list of positive integers")
        if not 0.0 <= m.dropout_rate < 1.0:
            problems.append(f"model.dropout_rate={m.dropout_rate} must be in [0, 1)")
        if m.l2_regularization < 0:
            problems.append(f"model.l2_regularization={m.l2_regularization} must be >= 0")
        if m.temperature <= 0:
            problems.append(f"model.temperature={m.temperature} must be > 0")
        if t.batch_size < 2:
            problems.append(f"training.batch_size={t.batch_size} must be >= 2 (in-batch negatives need a batch)")
        if t.epochs < 1:
            problems.append(f"training.epochs={t.epochs} must be >= 1")
        if t.learning_rate <= 0:
            problems.append(f"training.learning_rate={t.learning_rate} must be > 0")
        if t.patience < 0:
            problems.append(f"training.patience={t.patience} must be >= 0")
        if not 0.0 <= t.validation_split < 1.0:
            problems.append(f"training.validation_split={t.validation_split} must be in [0, 1)")
        if t.distribute_strategy not in {"one_device", "mirrored", "multi_worker_mirrored"}:
            problems.append(
                f"training.distribute_strategy={t.distribute_strategy!r} is unknown: use one_device, "
                "mirrored or multi_worker_mirrored"
            )
        if f.text_dim < 1:
            problems.append(f"features.text_dim={f.text_dim} must be >= 1")
        if problems:
            raise ValueError("Invalid config:\n  - " + "\n  - ".join(problems))
        return self


_SECTIONS = {"model": ModelConfig, "training": TrainingConfig, "features": FeatureConfig}


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    where = f"{section}.{key}"
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"{where}={value!r} is not a valid value: {exc}") from exc
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}={value!r} must be true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{where}={value!r} must be an integer")
        return value
    if isinstance(default, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{where}={value!r} must be a number")
        return float(value)
    if isinstance(default, list):
        if isinstance(value, int):
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"{where}={value!r} must be a list such as [512, 256, 128]")
        return [int(v) for v in value]
    return value


def config_from_dict(raw: Mapping[str, Any] | None = None, source: str = "<dict>") -> TowerOpsConfig:
    """Build a validated config; missing keys take the seed's defaults."""
    raw = dict(raw or {})
    cfg = TowerOpsConfig()
    for section, values in raw.items():
        if section not in _SECTIONS:
            raise ValueError(
                f"{source}: unknown config section {section!r}; allowed sections: {sorted(_SECTIONS)}"
            )
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise ValueError(f"{source}: section {section!r} must be a mapping, got {type(values).__name__}")
        target = getattr(cfg, section)
        known = {f.name for f in fields(target)}
        for key, value in values.items():
            if key not in known:
                raise ValueError(f"{source}: unknown key {section}.{key}; allowed keys: {sorted(known)}")
            setattr(target, key, _coerce(section, key, value, getattr(target, key)))
    return cfg.validate()


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TowerOpsConfig:
    """Read a JSON/YAML config file (or the defaults) and apply dotted overrides."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist; pass an existing JSON or YAML file")
        text = p.read_text(encoding="utf-8")
        try:
            raw = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text) or {}
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ValueError(f"config file {p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError(f"config file {p} must hold a mapping with 'model' and 'training' sections")
        source = str(p)
    raw = copy.deepcopy(raw)
    for dotted, value in (overrides or {}).items():
        if value is None or value == "":
            continue
        if "." not in dotted:
            raise ValueError(f"override {dotted!r} must be 'section.key', e.g. training.epochs")
        section, key = dotted.split(".", 1)
        raw.setdefault(section, {})
        if raw[section] is None:
            raw[section] = {}
        raw[section][key] = value
    return config_from_dict(raw, source)


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`["training.epochs=5", ...]` -> `{"training.epochs": "5"}`."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value, e.g. training.epochs=5")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out

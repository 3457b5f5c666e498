from __future__ import annotations

import json

import pytest

from ml.config import config_from_dict, load_config, parse_overrides


def test_defaults_are_the_seed_architecture() -> None:
    cfg = load_config(None)
    assert cfg.model.item_embedding_dim == cfg.model.user_embedding_dim == 768
    assert cfg.model.hidden_units == [512, 256, 128]
    assert (cfg.model.dropout_rate, cfg.model.l2_regularization, cfg.training.learning_rate) == (0.2, 0.01, 0.001)


def test_file_and_overrides(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {"hidden_units": [8]}, "training": {"epochs": 3}}))
    cfg = load_config(path, {"training.epochs": "5", "model.hidden_units": "[16, 8]", "training.patience": ""})
    assert cfg.training.epochs == 5 and cfg.model.hidden_units == [16, 8] and cfg.training.patience == 10


@pytest.mark.parametrize("raw, message", [
    ({"modle": {}}, "unknown config section 'modle'"),
    ({"model": {"hidden": [1]}}, "unknown key model.hidden"),
    ({"model": {"dropout_rate": 1.5}}, r"model.dropout_rate=1.5 must be in \[0, 1\)"),
    ({"model": {"user_embedding_dim": 64}}, "user_embedding_dim=64 differs"),
    ({"training": {"epochs": "many"}}, "training.epochs='many' must be an integer"),
    ({"training": {"batch_size": 1}}, "batch_size=1 must be >= 2"),
    ({"training": {"distribute_strategy": "tpu"}}, "distribute_strategy='tpu' is unknown"),
])
def test_bad_config_names_key_and_value(raw, message) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_dict(raw)


def test_missing_and_malformed_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_config(bad)
    with pytest.raises(ValueError, match="section.key=value"):
        parse_overrides(["epochs"])


# ---- every config file: typed models, unknown keys named with their path and the fix -------------

def _shipped():
    """(file under configs/, how the project loads it, its model) for every shipped config file."""
    from support.helpers import REPO_ROOT

    from ml.config import TowerOpsConfig, read_config_file, validate_config
    from ml.training.tuning import TuningFile
    from monitoring.config import MonitoringConfig, load_monitoring_config
    from registry.deploy.config import DeployConfig, load_deploy_config
    from registry.gate import RegistryConfig, load_registry_config

    return REPO_ROOT / "configs", [
        ("training.json", load_config, TowerOpsConfig),
        ("tuning.yaml", lambda p: validate_config(TuningFile, read_config_file(p), str(p)), TuningFile),
        ("registry.yaml", load_registry_config, RegistryConfig),
        ("deployment.yaml", load_deploy_config, DeployConfig),
        ("monitoring.yaml", load_monitoring_config, MonitoringConfig),
    ]


def test_every_config_file_has_a_model() -> None:
    folder, shipped = _shipped()
    on_disk = sorted(p.name for p in folder.iterdir() if p.suffix in (".json", ".yaml", ".yml"))
    assert on_disk == sorted(name for name, _, _ in shipped)


@pytest.mark.parametrize("index", range(5))
def test_shipped_file_loads_and_equals_the_defaults_in_code(index: int) -> None:
    """The defaults live in the models; each file spells them out (so it documents them)."""
    from pydantic import BaseModel

    folder, shipped = _shipped()
    name, load, model = shipped[index]
    loaded = load(folder / name)
    assert isinstance(loaded, model)
    assert loaded.model_dump() == model().model_dump()

    def unlisted(cls: type[BaseModel], raw: dict, prefix: str = "") -> list[str]:
        out = []
        for key, field in cls.model_fields.items():
            if field.exclude or (key not in raw and field.default is None):
                continue  # optional keys without a default value (documented in the file's comments)
            if key not in raw:
                out.append(prefix + key)
            elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                out += unlisted(field.annotation, raw[key], f"{prefix}{key}.")
        return out

    from ml.config import read_config_file

    assert unlisted(model, read_config_file(folder / name)) == [], f"configs/{name} does not show these defaults"


@pytest.mark.parametrize(("name", "text", "message"), [
    ("training.json", '{"training": {"epoch": 3}}',
     r"unknown key training\.epoch: did you mean 'training\.epochs'\? allowed keys of training: .*batch_size"),
    ("tuning.yaml", "sampler: {type: tpe, sed: 3}\n",
     r"unknown key sampler\.sed: did you mean 'sampler\.seed'\? allowed keys of sampler: n_startup_trials, seed, type"),
    ("tuning.yaml", "search_space:\n  learning_rate: {low: 0.001, high: 0.01, logg: true}\n",
     r"unknown key search_space\.learning_rate\.logg: did you mean 'search_space\.learning_rate\.log'\?"),
    ("registry.yaml", "gate:\n  absolut: {ndcg_at_10: 0.1}\n",
     r"unknown key gate\.absolut: did you mean 'gate\.absolute'\? allowed keys of gate: absolute, "),
    ("registry.yaml", "modelname: x\n", r"unknown key modelname: did you mean 'model_name'\?"),
    ("deployment.yaml", "storage:\n  retry: {attempts: 3, backof_s: 1}\n",
     r"unknown key storage\.retry\.backof_s: did you mean 'storage\.retry\.backoff_s'\? "
     r"allowed keys of storage\.retry: attempts, backoff_s, max_backoff_s"),
    ("deployment.yaml", "versionning: {max_versions: 3}\n",
     r"unknown config section 'versionning': did you mean 'versioning'\? allowed sections: storage, supabase, "
     r"versioning"),
    ("monitoring.yaml", "webhook: {timeout: 3}\n",
     r"unknown key webhook\.timeout: did you mean 'webhook\.timeout_s'\? allowed keys of webhook: attempts, "),
    ("monitoring.yaml", "alerts:\n  - {name: a, metric: m, threshold: 1, severty: error}\n",
     r"unknown key alerts\.0\.severty: did you mean 'alerts\.0\.severity'\?"),
])
def test_unknown_key_is_rejected_with_its_path_and_a_fix(tmp_path, name: str, text: str, message: str) -> None:
    from ml.config import ConfigError

    folder, shipped = _shipped()
    load = {n: loader for n, loader, _ in shipped}[name]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        load(path)
    assert str(path) in str(caught.value)  # the message names the file


def test_bad_values_are_all_reported_with_path_value_and_fix() -> None:
    from ml.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        config_from_dict({"model": {"hidden_units": [64, 0], "dropout_rate": 1.5},
                          "training": {"jit_compile": "maybe", "seed": True}}, "c.yaml")
    assert caught.value.problems == [
        "model.hidden_units.1=0 must be > 0 (e.g. [512, 256, 128])",
        "model.dropout_rate=1.5 must be in [0, 1)",
        "training.seed=True must be a number, not true/false",
        "training.jit_compile='maybe' must be true or false",
    ]
    assert str(caught.value).startswith("Invalid config c.yaml:\n  - ")


def test_overrides_are_coerced_through_the_model() -> None:
    cfg = load_config(None, {"training.epochs": "5", "training.learning_rate": "1e-3", "training.jit_compile": "true",
                             "model.hidden_units": "64", "model.dropout_rate": "0"})
    assert (cfg.training.epochs, cfg.training.learning_rate, cfg.training.jit_compile) == (5, 0.001, True)
    assert cfg.model.hidden_units == [64] and cfg.model.dropout_rate == 0.0
    assert isinstance(cfg.model.dropout_rate, float)
    with pytest.raises(ValueError, match="with overrides training.epochs:\n  - training.epochs='five' must be an "
                                         "integer"):
        load_config(None, {"training.epochs": "five"})
    with pytest.raises(ValueError, match="unknown config section 'trainig': did you mean 'training'"):
        load_config(None, {"trainig.epochs": "5"})

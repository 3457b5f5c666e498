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

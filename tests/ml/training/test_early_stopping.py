"""Early stopping and best-weights restore, on a run whose validation loss is made to worsen.

From the third epoch on a callback sets Adam's learning rate to 50: every later epoch throws
the towers far from what they learnt, so validation loss rises and stays up (the towers end
in unit-normalised embeddings, so the loss stays finite). With patience 2 the run must stop
two epochs after its best one, long before `epochs`, and the bundle (Keras model, towers,
metadata, checkpoint) must hold the best epoch's weights, not the last.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow

EPOCHS, PATIENCE, WRECK_FROM = 12, 2, 2


def _wrecking_callback():
    import keras

    class WreckAndRecord(keras.callbacks.Callback):
        """Records the weights at every epoch end; from epoch WRECK_FROM trains with lr 50."""

        def __init__(self) -> None:
            super().__init__()
            self.weights: list[list[np.ndarray]] = []

        def on_epoch_begin(self, epoch, logs=None):
            if epoch >= WRECK_FROM:
                self.model.optimizer.learning_rate.assign(50.0)

        def on_epoch_end(self, epoch, logs=None):
            self.weights.append([np.array(w, copy=True) for w in self.model.get_weights()])

    return WreckAndRecord()


def _same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def stopped(tiny_synth, tmp_path_factory):
    from ml.training.trainer import create_standard_trainer

    config = {
        "model": {"user_embedding_dim": 32, "item_embedding_dim": 32, "hidden_units": [64, 32], "dropout_rate": 0.0,
                  "l2_regularization": 0.0},
        "training": {"batch_size": 128, "epochs": EPOCHS, "patience": PATIENCE, "seed": 7, "learning_rate": 0.003},
        "features": {"text_dim": 16},
    }
    recorder = _wrecking_callback()
    out = tmp_path_factory.mktemp("early_stop") / "model"
    trainer = create_standard_trainer(model_dir=out, config=config, callbacks=[recorder])
    history = trainer.train(dataset=tiny_synth.dataset)
    return trainer, history, recorder, out


def test_training_stops_patience_epochs_after_the_best(stopped) -> None:
    trainer, history, recorder, out = stopped
    val = history["val_loss"]
    best = int(np.argmin(val))
    assert best < WRECK_FROM, val                       # the wrecked epochs are all worse
    assert all(v > val[best] for v in val[WRECK_FROM:]), val
    assert len(val) == best + PATIENCE + 1 < EPOCHS      # stopped early, exactly patience epochs later
    assert len(recorder.weights) == len(val)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["best_epoch"] == trainer.best_epoch == best
    assert meta["epochs_run"] == len(val)
    assert json.loads((out / "history.json").read_text())["val_loss"] == pytest.approx(val)


def test_final_metrics_are_the_best_epochs(stopped) -> None:
    _, history, _, out = stopped
    best = int(np.argmin(history["val_loss"]))
    final = json.loads((out / "metadata.json").read_text())["final_metrics"]
    assert set(final) == set(history)
    for key, values in history.items():
        assert final[key] == pytest.approx(values[best]), key
    assert final["val_loss"] < history["val_loss"][-1]


def test_exported_model_and_checkpoint_hold_the_best_epochs_weights(stopped) -> None:
    import keras

    _, history, recorder, out = stopped
    best = int(np.argmin(history["val_loss"]))
    want, last = recorder.weights[best], recorder.weights[-1]
    assert not _same_weights(want, last)                 # the test can tell them apart

    exported = keras.saving.load_model(out / "keras" / "two_tower.keras", compile=False)
    assert _same_weights(exported.get_weights(), want)

    checkpoint = keras.saving.load_model(out / "keras" / "two_tower.keras", compile=False)
    checkpoint.load_weights(out / "checkpoints" / "best.weights.h5")
    assert _same_weights(checkpoint.get_weights(), want)

    # the towers saved on their own (what serving and TF.js load) hold the same, best, weights
    for name, tower in (("user_tower", exported.user_tower), ("item_tower", exported.item_tower)):
        alone = keras.saving.load_model(out / "keras" / f"{name}.keras", compile=False)
        assert _same_weights(alone.get_weights(), tower.get_weights()), name


def test_validation_loss_recomputed_from_the_export_is_the_best_epochs(stopped) -> None:
    """Keras' own test step on the exported model reproduces the best epoch's recorded val_loss."""
    import keras

    trainer, history, _, out = stopped
    best = int(np.argmin(history["val_loss"]))
    _, _, valid = trainer.training_arrays(trainer.prepared)
    assert valid is not None
    model = keras.saving.load_model(out / "keras" / "two_tower.keras", compile=False)
    model.compile(optimizer="adam")
    x_val, y_val = valid
    got = model.evaluate(x_val, y_val, batch_size=min(128, len(y_val)), verbose=0, return_dict=True)
    assert got["loss"] == pytest.approx(history["val_loss"][best], rel=1e-4)
    assert got["loss"] < history["val_loss"][-1]


def test_early_stopping_on_a_validation_ranking_metric(tiny_synth, tiny_config, tmp_path) -> None:
    """training.early_stopping_metric=val_ndcg_at_10: the metric is in every epoch's history, the
    best epoch is its maximum, and the bundle keeps that epoch's figures."""
    from ml.evaluation.validation import ValidationRanking
    from ml.training.trainer import create_standard_trainer

    tiny_config["training"].update({"epochs": 3, "patience": 3, "early_stopping_metric": "val_ndcg_at_10"})
    trainer = create_standard_trainer(tmp_path / "model", tiny_config)
    history = trainer.train(dataset=tiny_synth.dataset)
    values = history["val_ndcg_at_10"]
    assert len(values) == len(history["loss"]) == 3 and all(0 <= v <= 1 for v in values)
    assert trainer.best_epoch == int(np.argmax(values))
    meta = json.loads((tmp_path / "model" / "metadata.json").read_text())
    assert meta["best_epoch"] == trainer.best_epoch
    assert meta["final_metrics"]["val_ndcg_at_10"] == pytest.approx(max(values))
    # the restored (best) weights rank the validation part as that epoch did
    assert ValidationRanking(trainer, "val_ndcg_at_10", 10)(trainer.model) == pytest.approx(max(values), abs=1e-6)


@pytest.mark.parametrize("metric", ["ndcg_at_10", "val_ndcg", "val_ndcg_at_0", "loss"])
def test_unknown_early_stopping_metric_is_refused_by_the_config(metric: str) -> None:
    from ml.config import load_config

    with pytest.raises(ValueError, match="early_stopping_metric.*val_loss or a validation ranking metric"):
        load_config(None, {"training.early_stopping_metric": metric})

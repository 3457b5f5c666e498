"""Training: time split per user, feature fitting, Keras fit with early stopping and
best-weights checkpoints, then export of the model bundle.

`training.distribute_strategy` picks a tf.distribute strategy (ml.training.distribute): the model is
built and compiled under its scope and fed a tf.data pipeline batched to the global batch
size; a non-chief worker checkpoints to a temporary folder and exports no bundle.

`create_standard_trainer(model_dir, config).train(user_features=..., item_features=...,
interactions=...)` is the seed's API; `ml.tracking.training.train_run` wraps it in an MLflow run.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ml.config import TowerOpsConfig, config_from_dict
from ml.data.schema import Dataset
from ml.data.split import TimeSplit, time_split_per_user
from ml.logs import get_logger, metric_text

if TYPE_CHECKING:
    from ml.model.inputs import IdTables
    from ml.training.distribute import Distribution

log = get_logger("training")


@dataclass
class PreparedData:
    """Everything the fit and the export need, computed once.

    `item_known` / `user_known`: catalog items and users with at least one training
    interaction, i.e. the ID vocabulary; the others fall back to the OOV row.
    """

    item_ids: np.ndarray
    user_ids: np.ndarray
    item_vectors: np.ndarray
    profiles: np.ndarray
    user_rows: np.ndarray
    item_rows: np.ndarray
    labels: np.ndarray
    split: TimeSplit
    # the training rows' leave-one-out user inputs when standardisation already computed them (prepare)
    train_user_features: np.ndarray | None = None

    @property
    def item_known(self) -> np.ndarray:
        return np.bincount(self.item_rows[self.split.train], minlength=len(self.item_ids)) > 0

    @property
    def user_known(self) -> np.ndarray:
        return np.bincount(self.user_rows[self.split.train], minlength=len(self.user_ids)) > 0


class EpochProgress:
    """Keras callback: one line per epoch on the terminal and in logs/training.log.

    The line carries the epoch's wall time and the process CPU time it used: on a shared
    machine the CPU seconds say how much work the epoch was when the wall time is noisy."""

    def __new__(cls, total_epochs: int):
        import keras

        class _Progress(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self._t0 = time.time()

            def on_epoch_begin(self, epoch, logs=None):
                self._te, self._ce = time.time(), time.process_time()

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                shown = " ".join(f"{k}={metric_text(v, why='undefined this epoch')}" for k, v in sorted(logs.items())
                                 if isinstance(v, (int, float)))
                log.info("epoch %d/%d (%.2fs, cpu %.2fs) %s", epoch + 1, total_epochs, time.time() - self._te,
                         time.process_time() - self._ce, shown)

        return _Progress()


class TwoTowerTrainer:
    """Fits the feature pipeline and the two-tower model and writes the model bundle."""

    def __init__(self, model_dir: str | Path, config: TowerOpsConfig | Mapping[str, Any] | None = None,
                 callbacks: Sequence[Any] = (), distribution: "Distribution | None" = None) -> None:
        self.model_dir = Path(model_dir)
        self.config = config if isinstance(config, TowerOpsConfig) else config_from_dict(config or {})
        self.callbacks = list(callbacks)
        self.distribution = distribution  # created from config.training.distribute_strategy when None
        self.model = None
        self.pipeline = None
        self.prepared: PreparedData | None = None
        self.history: dict[str, list[float]] = {}
        self.best_epoch: int | None = None
        self.timings: dict[str, float] = {}  # seconds per phase of train(): prepare, fit, export (bench/train.py)

    # ------------------------------------------------------------------ data
    def prepare(self, dataset: Dataset) -> PreparedData:
        from ml.data.ratings import apply_rating_config
        from ml.preprocessing.features import FeaturePipeline

        cfg = self.config
        dataset = apply_rating_config(dataset, cfg.data.rating_scale, cfg.data.like_threshold)  # likes per data.*
        self.pipeline = FeaturePipeline(config=cfg.features, seed=cfg.training.seed).fit(dataset.items, dataset.users)
        item_ids = dataset.items["item_id"].to_numpy()
        user_ids = dataset.users["user_id"].to_numpy()
        item_index = pd.Index(item_ids)
        user_index = pd.Index(user_ids)
        inter = dataset.interactions
        user_rows = user_index.get_indexer(inter["user_id"]).astype(np.int64)
        item_rows = item_index.get_indexer(inter["item_id"]).astype(np.int64)
        if (user_rows < 0).any() or (item_rows < 0).any():
            raise ValueError("interactions reference users or items missing from their tables; run validate_dataset first")
        labels = inter["label"].to_numpy().astype(np.int64)
        split = time_split_per_user(inter, cfg.training.validation_split, cfg.training.test_split)
        profiles = self.pipeline.profile_matrix(dataset.users)
        kept: dict[str, np.ndarray] = {}
        if cfg.features.standardize:  # tower inputs to mean 0 / variance 1 over the training part
            tr = split.train
            self.pipeline.fit_scaling(dataset.items, profiles, user_rows[tr], item_rows[tr], labels[tr], len(user_ids),
                                      keep=kept)
        prepared = PreparedData(
            item_ids=item_ids,
            user_ids=user_ids,
            item_vectors=kept["item_vectors"] if "item_vectors" in kept else self.pipeline.item_matrix(dataset.items),
            train_user_features=kept.get("train_users"),
            profiles=profiles,
            user_rows=user_rows,
            item_rows=item_rows,
            labels=labels,
            split=split,
        )
        n_train_likes = int(prepared.labels[prepared.split.train].sum())
        if n_train_likes == 0:
            raise ValueError(
                "the training split holds no likes (decision='like' or rating >= 0.5): the in-batch softmax "
                "has no positives to learn from; check the interactions' decision/rating column"
            )
        self.prepared = prepared
        log.info(
            "prepared features: %d users, %d items, %d train / %d validation / %d test interactions (test never "
            "read in training), item_dim=%d user_dim=%d",
            len(user_ids), len(item_ids), int(prepared.split.train.sum()), int(prepared.split.valid.sum()),
            int(prepared.split.test.sum()), self.pipeline.item_dim, self.pipeline.user_dim,
        )
        return prepared

    @property
    def uses_ids(self) -> bool:
        """Whether the towers get the ID stage (model.id_embedding_dim > 0)."""
        return self.config.model.id_embedding_dim > 0

    def training_arrays(self, p: PreparedData) -> tuple[dict, np.ndarray, tuple[dict, np.ndarray] | None]:
        """Model inputs of the train rows (history without the row itself) and of the validation rows
        (history = the train part). The test part is not touched."""
        from ml.model.inputs import history_id_matrix, leave_out

        pl = self.pipeline
        tr, va = p.split.train, p.split.valid
        n_users = len(p.user_ids)
        # log q(item): how often each item fills a batch slot (its share of training rows)
        counts = np.bincount(p.item_rows[tr], minlength=len(p.item_ids)).astype(np.float64)
        log_q = np.log(np.maximum(counts, 1.0) / max(int(tr.sum()), 1)).astype(np.float32)
        u_tr, i_tr, y_tr = p.user_rows[tr], p.item_rows[tr], p.labels[tr]
        x_train = {
            "user_features": p.train_user_features if p.train_user_features is not None else
            pl.leave_one_out_user_matrix(p.profiles, p.item_vectors, u_tr, i_tr, y_tr, n_users),
            "item_features": p.item_vectors[i_tr],
            "user_index": u_tr,
            "item_index": i_tr,
            "item_log_q": log_q[i_tr],
        }
        if self.uses_ids:
            m, seed = self.config.model, self.config.training.seed
            liked = history_id_matrix(u_tr[y_tr == 1], i_tr[y_tr == 1], n_users, m.history_length, seed)
            noped = history_id_matrix(u_tr[y_tr == 0], i_tr[y_tr == 0], n_users, m.history_length, seed + 1)
            x_train.update({
                "user_id": u_tr.astype(np.int32), "item_id": i_tr.astype(np.int32),
                "liked_ids": leave_out(liked[u_tr], i_tr, y_tr == 1),
                "noped_ids": leave_out(noped[u_tr], i_tr, y_tr == 0),
            })
        y_train = y_tr.astype(np.float32)
        valid = None
        if va.any():
            history_users = pl.user_matrix(p.profiles, p.item_vectors, u_tr, i_tr, y_tr, n_users)
            u_va, i_va = p.user_rows[va], p.item_rows[va]
            x_val = {
                "user_features": history_users[u_va],
                "item_features": p.item_vectors[i_va],
                "user_index": u_va,
                "item_index": i_va,
                "item_log_q": log_q[i_va],
            }
            if self.uses_ids:
                known_u, known_i = p.user_known, p.item_known
                x_val.update({
                    "user_id": np.where(known_u[u_va], u_va, -1).astype(np.int32),
                    "item_id": np.where(known_i[i_va], i_va, -1).astype(np.int32),
                    "liked_ids": liked[u_va], "noped_ids": noped[u_va],
                })
            valid = (x_val, p.labels[va].astype(np.float32))
        return x_train, y_train, valid

    def id_tables(self) -> "IdTables":
        """The model's ID tables as exported: items/users without a training interaction carry the OOV row."""
        p = self.prepared
        return self.model.id_tables().with_cold_rows_as_oov(p.item_known, p.user_known) if self.uses_ids else \
            _empty_tables(len(p.item_ids), len(p.user_ids))

    # ----------------------------------------------------------------- train
    def ensure_distribution(self) -> "Distribution":
        """The strategy to train under: the one given, else the config's (TF_CONFIG checked here)."""
        if self.distribution is None:
            from ml.training.distribute import setup_distribution

            self.distribution = setup_distribution(self.config)
        return self.distribution

    def precision_policy(self) -> str:
        """The Keras dtype policy training runs under (`training.mixed_precision`; auto: mixed_float16 on a GPU)."""
        from ml.training.precision import resolve_precision

        return resolve_precision(self.config.training.mixed_precision)

    def build_model(self, strategy: Any | None = None, policy: str = "float32"):
        """Build and compile the model; under `strategy.scope()` so its variables are mirrored.

        `policy` is the Keras dtype policy of its layers: "float32" for the model that is
        exported, "mixed_float16"/"mixed_bfloat16" for training on a GPU (variables stay
        float32, so the weights copy one to one into a float32 model afterwards).
        """
        import keras

        from ml.model.optim import decoupled_weight_decay_optimizer
        from ml.model.two_tower import TwoTowerModel
        from ml.training.precision import dtype_policy

        cfg = self.config
        keras.utils.set_random_seed(cfg.training.seed)
        n_items = len(self.prepared.item_ids) if self.prepared is not None else None
        n_users = len(self.prepared.user_ids) if self.prepared is not None else None
        with strategy.scope() if strategy is not None else nullcontext(), dtype_policy(policy):
            model = TwoTowerModel.from_config_object(cfg.model, self.pipeline.user_dim, self.pipeline.item_dim,
                                                     bce_weight=cfg.training.bce_weight, n_items=n_items,
                                                     n_users=n_users, seed=cfg.training.seed)
            model.compile(optimizer=decoupled_weight_decay_optimizer(cfg.training.learning_rate,
                                                                     cfg.model.l2_regularization),
                          jit_compile=cfg.training.jit_compile,
                          # one step per call under a strategy: Keras' multi-step loop over a distributed
                          # iterator fails there ("You must feed a value for placeholder tensor ...")
                          steps_per_execution=cfg.training.steps_per_execution if strategy is None else 1)
        return model

    def fit(self, x_train: dict, y_train: np.ndarray, valid: tuple[dict, np.ndarray] | None) -> dict[str, list[float]]:
        import keras

        cfg = self.config.training
        dist = self.ensure_distribution()
        policy = self.precision_policy()
        self.model = self.build_model(dist.strategy if dist.distributed else None, policy)
        from ml.training.callbacks import EmbeddingHealth

        monitor, mode, ranking = self._monitor(valid is not None)
        ckpt_dir = self.model_dir / "checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        callbacks = [
            EmbeddingHealth(self),  # first: the figures land in the logs every later callback sees
            *([ranking] if ranking is not None else []),
            keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=cfg.patience, restore_best_weights=True,
                                          verbose=0),
            keras.callbacks.ModelCheckpoint(str(ckpt_dir / "best.weights.h5"), monitor=monitor, mode=mode,
                                            save_best_only=True, save_weights_only=True),
            EpochProgress(cfg.epochs),
            *self.callbacks,
        ]
        if dist.distributed:
            self.history = self._fit_distributed(dist, x_train, y_train, valid, callbacks)
        else:
            # one tf.data pipeline: the arrays become tensors once, each batch is one gather of shuffled rows
            # inside TensorFlow (no per-step numpy slicing or Python work), prefetched while the step trains
            batch_size = min(cfg.batch_size, len(y_train))
            train_ds = _batched_dataset(x_train, y_train, batch_size, shuffle_seed=cfg.seed, drop_remainder=False)
            val_ds = None if valid is None else _batched_dataset(valid[0], valid[1], min(cfg.batch_size, len(valid[1])),
                                                                 shuffle_seed=None, drop_remainder=False)
            log.info("training %d epochs max, batch %d, %d examples, %d steps per execution%s%s", cfg.epochs,
                     batch_size, len(y_train), cfg.steps_per_execution, ", XLA" if cfg.jit_compile else "",
                     "" if policy == "float32" else f", {policy}")
            hist = self.model.fit(train_ds, epochs=cfg.epochs, validation_data=val_ds, verbose=0, callbacks=callbacks,
                                  shuffle=False)  # the pipeline shuffles (Keras warns otherwise)
            self.history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
            if policy != "float32":
                self.model = self._float32_copy(self.model, x_train)
        series = [v if np.isfinite(v) else (np.inf if mode == "min" else -np.inf) for v in self.history.get(monitor, [])]
        self.best_epoch = (int(np.argmin(series)) if mode == "min" else int(np.argmax(series))) if series else None
        return self.history

    def _monitor(self, has_validation: bool) -> tuple[str, str, Any]:
        """(logged metric, 'min'/'max', the callback that computes it or None) for early stopping."""
        metric = self.config.training.early_stopping_metric
        if not has_validation:
            return "loss", "min", None
        if metric == "val_loss":
            return metric, "min", None
        from ml.training.callbacks import RankingMetric

        return metric, "max", RankingMetric(self, metric)

    def _fit_distributed(self, dist: "Distribution", x_train: dict, y_train: np.ndarray,
                         valid: tuple[dict, np.ndarray] | None, callbacks: list) -> dict[str, list[float]]:
        """Fit under a tf.distribute strategy on tf.data batches of the global batch size.

        Every worker builds the same shuffled batches (same data, same seed); auto-shard
        policy DATA hands each replica its slice of every global batch. With several replicas
        only full batches are fed (a short last batch could leave a replica empty, and all
        workers must run the same steps): training drops under one batch per epoch (reshuffled
        each epoch), validation picks a batch size near the configured one that leaves the
        fewest rows out. Mirrored uses Keras' fit; multi-worker uses a plain loop over
        `train_step`/`test_step`, because Keras 3's fit fails under MultiWorkerMirroredStrategy
        (keras-team/keras#20585). Afterwards the weights go into an undistributed copy of the
        model, so export (predict, save) runs outside the strategy on the chief alone.
        """
        from ml.training.distribute import global_batch_problem

        cfg = self.config.training
        n_rep = dist.num_replicas
        problem = global_batch_problem(cfg.batch_size, n_rep)
        if problem:
            raise ValueError(problem)
        batch = _global_batch(cfg.batch_size, len(y_train), n_rep)
        if batch < 2 * n_rep:
            raise ValueError(f"{len(y_train)} training rows cannot fill a batch of 2 rows on each of {n_rep} replicas")
        full_only = n_rep > 1
        train_ds = _batched_dataset(x_train, y_train, batch, shuffle_seed=cfg.seed, drop_remainder=full_only,
                                    distributed=True)
        val_ds = None
        if valid is not None:
            val_batch = _eval_batch(cfg.batch_size, len(valid[1]), n_rep)
            if val_batch >= 2 * n_rep or (val_batch and not full_only):
                val_ds = _batched_dataset(valid[0], valid[1], val_batch, shuffle_seed=None, drop_remainder=full_only,
                                          distributed=True)
                dropped = len(valid[1]) % val_batch if full_only else 0
                if dropped:
                    log.info("validation: batches of %d, %d of %d rows left out to keep every replica's batch full",
                             val_batch, dropped, len(valid[1]))
            else:
                log.warning("validation: %d rows are too few for %d replicas; training without validation",
                            len(valid[1]), n_rep)
        log.info("training %d epochs max under %s: %d replica(s), global batch %d (%d per replica), %d examples",
                 cfg.epochs, dist.plan.describe(), n_rep, batch, batch // n_rep, len(y_train))
        if dist.multi_worker:
            history = _fit_loop(self.model, dist.strategy, train_ds, val_ds, cfg.epochs, callbacks)
        else:
            hist = self.model.fit(train_ds, epochs=cfg.epochs, validation_data=val_ds, verbose=0, callbacks=callbacks)
            history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
        self.model = self._float32_copy(self.model, x_train)
        return history

    def _float32_copy(self, trained: Any, x_train: dict) -> Any:
        """An undistributed float32 model holding `trained`'s weights: what export, serving and TF.js get."""
        plain = self.build_model(None)
        plain({k: v[:2] for k, v in x_train.items()}, training=False)  # build, so the bundle saves it whole
        plain.set_weights(trained.get_weights())
        return plain

    def train(
        self,
        user_features: pd.DataFrame | None = None,
        item_features: pd.DataFrame | None = None,
        interactions: pd.DataFrame | None = None,
        dataset: Dataset | None = None,
        data_fingerprint: Mapping[str, Any] | None = None,
    ) -> dict[str, list[float]]:
        """Validate the data, fit, and write the model bundle to `model_dir`. Returns the Keras history."""
        from ml.bundle.export import export_bundle
        from ml.data.fingerprint import dataset_fingerprint
        from ml.data.validation import validate_dataset

        if dataset is None:
            if user_features is None or item_features is None or interactions is None:
                raise ValueError("pass user_features, item_features and interactions DataFrames, or dataset=")
            dataset = validate_dataset(user_features, item_features, interactions,
                                       {"users": "user_features", "items": "item_features", "interactions": "interactions"},
                                       self.config.data.rating_scale, self.config.data.like_threshold)
        dist = self.ensure_distribution()
        scratch = None
        if not dist.is_chief:
            scratch = Path(tempfile.mkdtemp(prefix="towerops-worker-"))
            log.info("%s is not the chief: checkpoints go to %s, no bundle is written to %s",
                     dist.plan.describe(), scratch, self.model_dir)
            self.model_dir = scratch
        try:
            t0 = time.perf_counter()
            prepared = self.prepare(dataset)
            x_train, y_train, valid = self.training_arrays(prepared)
            t1 = time.perf_counter()
            history = self.fit(x_train, y_train, valid)
            t2 = time.perf_counter()
            if dist.is_chief:
                export_bundle(self, dataset, fingerprint=dict(data_fingerprint or dataset_fingerprint(dataset)))
            self.timings = {"prepare": t1 - t0, "fit": t2 - t1, "export": time.perf_counter() - t2}
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        return history


def _empty_tables(n_items: int, n_users: int) -> "IdTables":
    from ml.model.inputs import IdTables

    return IdTables.empty(n_items, n_users)


def create_standard_trainer(model_dir: str | Path = "models/two_tower",
                            config: TowerOpsConfig | Mapping[str, Any] | None = None,
                            callbacks: Sequence[Any] = (),
                            distribution: "Distribution | None" = None) -> TwoTowerTrainer:
    """The seed's entry point: a trainer with the standard architecture and the given overrides."""
    return TwoTowerTrainer(model_dir=model_dir, config=config, callbacks=callbacks, distribution=distribution)


def _global_batch(batch_size: int, n_rows: int, n_replicas: int) -> int:
    """The configured global batch, capped at the rows there are, a multiple of the replicas."""
    batch = min(batch_size, n_rows)
    return batch - batch % n_replicas


def _eval_batch(batch_size: int, n_rows: int, n_replicas: int) -> int:
    """Validation batch: the configured one with one replica; with several, the multiple of
    the replicas in [batch/2, batch] that leaves the fewest rows out of full batches."""
    hi = _global_batch(batch_size, n_rows, n_replicas)
    if n_replicas == 1 or hi <= 0:
        return hi
    lo = max(2 * n_replicas, hi // 2)
    candidates = range(hi, lo - 1, -n_replicas)
    return min(candidates, key=lambda b: (n_rows % b, -b), default=hi)


def _batched_dataset(x: dict, y: np.ndarray, batch: int, shuffle_seed: int | None, drop_remainder: bool,
                     distributed: bool = False):
    """Global batches of (x, y) as a tf.data pipeline that tf.distribute shards by DATA.

    The arrays are placed in TensorFlow once; the pipeline shuffles row indices (cheap), and one
    vectorised gather per batch and tensor builds the batch, prefetched ahead of the step.
    Undistributed, the arrays sit in (non-trainable) variables: a dataset function that
    captures them as constants gets them copied into its graph when tf.data optimises it at
    the first iterator, ~0.6 s of every run for the ~200 MB of training rows (bench/train.py);
    a variable is captured by its handle. Under a strategy they stay constants, which
    auto-sharding can rewrite."""
    import tensorflow as tf

    def place(array: np.ndarray):
        return tf.constant(array) if distributed else tf.Variable(array, trainable=False)

    n = len(y)
    ds = tf.data.Dataset.range(n)
    if shuffle_seed is not None:  # same seed on every worker: the same batches everywhere
        ds = ds.shuffle(n, seed=shuffle_seed, reshuffle_each_iteration=True)
    xs = {k: place(v) for k, v in x.items()}
    ys = place(y)
    ds = ds.batch(batch, drop_remainder=drop_remainder).map(
        lambda idx: ({k: tf.gather(v, idx) for k, v in xs.items()}, tf.gather(ys, idx)),
        num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _fit_loop(model: Any, strategy: Any, train_ds: Any, val_ds: Any, epochs: int,
              callbacks: list) -> dict[str, list[float]]:
    """`model.fit` for MultiWorkerMirroredStrategy: Keras' own train/test steps under
    `strategy.run`, metrics read (and all-reduced) at epoch end, the usual epoch callbacks."""
    import keras
    import tensorflow as tf

    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
    train_dist = strategy.experimental_distribute_dataset(train_ds)
    val_dist = strategy.experimental_distribute_dataset(val_ds) if val_ds is not None else None

    @tf.function
    def train_step(batch):
        strategy.run(model.train_step, args=(batch,))

    @tf.function
    def test_step(batch):
        strategy.run(model.test_step, args=(batch,))

    def results(prefix: str = "") -> dict[str, float]:
        return {prefix + k: float(v) for k, v in model.get_metrics_result().items()}

    cb = keras.callbacks.CallbackList(callbacks, model=model)
    history: dict[str, list[float]] = {}
    model.stop_training = False
    logs: dict[str, float] = {}
    cb.on_train_begin()
    for epoch in range(epochs):
        cb.on_epoch_begin(epoch)
        model.reset_metrics()
        for batch in train_dist:
            train_step(batch)
        logs = results()
        if val_dist is not None:
            model.reset_metrics()
            for batch in val_dist:
                test_step(batch)
            logs.update(results("val_"))
        cb.on_epoch_end(epoch, logs)
        for k, v in logs.items():
            history.setdefault(k, []).append(float(v))
        if model.stop_training:
            break
    cb.on_train_end(logs)
    return history


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(n_examples / batch_size))

"""Training throughput and fixed overhead: the `train` entry point vs a bare loop, same arrays, same run.

Prints one JSON object. The entry point runs as a subprocess (`python -m pipelines.cli
train`, SQLite tracking) so its wall time and peak RSS are the user's; its phases come from
its own `timings` log line (ml.tracking.training) and its per-epoch lines. The yardstick is a
bare `tf.function` loop over the very model the trainer builds (its towers with the ID stage,
its optimizer) on the same arrays and tf.data batches, with the model's loss terms (retrieval
+ bce_weight * rating + layer losses; checked against `model.compute_loss` on one batch, so a
change of the loss makes the bench fail instead of comparing unlike things) and a validation
pass per epoch, but no metrics, callbacks or tracking. The bare loop runs before and after the
entry point (the machine's load drifts); steady state leaves out each side's first epoch
(tracing). `cpu_ratio` compares process CPU seconds per epoch, which a shared machine disturbs
less than wall time.

    python bench/train.py [--users 2000 --items 5000 --interactions 100000 --epochs 3] [--set key=value]
    python bench/train.py --device gpu        # the seed's workload (100 epochs) on a GPU, with utilisation
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

EPOCH_LINE = re.compile(r"epoch \d+/\d+ \(([\d.]+)s, cpu ([\d.]+)s\)")
TIMINGS_LINE = re.compile(r"timings: (\{.*\})")


def bare_model_and_steps(trainer, x: dict, y):
    """The trainer's own model (towers, ID stage, optimizer) and bare train/eval steps with its loss terms."""
    import tensorflow as tf

    policy = trainer.precision_policy()  # float32 on the CPU, mixed_float16 on a GPU (training.mixed_precision)
    model = trainer.build_model(None, policy)
    bce = trainer.config.training.bce_weight
    scaled = policy == "mixed_float16"  # Keras wrapped the optimizer in a LossScaleOptimizer, as fit() uses it

    def loss_of(batch, y, training: bool):
        ue, ie = model(batch, training=training)
        retrieval = model.retrieval_task(ue, ie, y, item_index=batch.get("item_index"),
                                         user_index=batch.get("user_index"), item_log_q=batch.get("item_log_q"))
        rating, _ = model.rating_task(ue, ie, y)
        total = retrieval + bce * rating
        return total + tf.add_n(model.losses) if model.losses else total

    jit = trainer.config.training.jit_compile

    @tf.function(jit_compile=jit)
    def step(batch, y):
        with tf.GradientTape() as tape:
            loss = loss_of(batch, y, True)
            target = model.optimizer.scale_loss(loss) if scaled else loss
        variables = model.trainable_variables
        model.optimizer.apply_gradients(zip(tape.gradient(target, variables), variables))  # unscales when scaled
        return loss

    @tf.function(jit_compile=jit)
    def eval_step(batch, y):
        return loss_of(batch, y, False)

    # same loss as the model's compute_loss, or the comparison is of unlike things
    probe = {k: v[:64] for k, v in x.items()}
    y_probe = tf.constant(y[:64])
    mine = float(loss_of(probe, y_probe, False))
    theirs = float(model.compute_loss(x=probe, y=y_probe, y_pred=model(probe, training=False), training=False))
    model.reset_metrics()
    if abs(mine - theirs) > 1e-4 * max(1.0, abs(theirs)):
        raise SystemExit(f"bench/train.py: the bare loop's loss {mine:.6f} differs from TwoTowerModel.compute_loss "
                         f"{theirs:.6f} on the same batch: ml/model changed its loss terms; update loss_of here")
    return model, step, eval_step


def run_bare(step, eval_step, train_ds, val_ds, epochs: int) -> list[tuple[float, float]]:
    """(wall s, CPU s) per epoch of the bare loop."""
    out = []
    for _ in range(epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        for batch, y in train_ds:
            step(batch, y)
        if val_ds is not None:
            for batch, y in val_ds:
                eval_step(batch, y)
        out.append((time.perf_counter() - t0, time.process_time() - c0))
    return out


def steady(values: list[float]) -> float:
    """Mean over the epochs after the first (tracing); the only epoch when there is one."""
    rest = values[1:] or values
    return sum(rest) / len(rest)


def entry_point(tmp: Path, epochs: int, overrides: list[str], device: str) -> dict:
    """Run `towerops train` as a user does; wall time, peak RSS, per-epoch and per-phase figures."""
    import resource

    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}", TOWEROPS_LOG_DIR=str(tmp / "logs"),
               TOWEROPS_LOG_LEVEL="INFO")
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--data", str(tmp / "data"), "--model-dir",
           str(tmp / "model"), "--config", str(REPO / "configs" / "training.json"),
           "--set", f"training.epochs={epochs}", "--set", f"training.patience={epochs}"]
    for item in overrides:
        cmd += ["--set", item]
    import mlflow

    mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).search_experiments()  # the store's one-off creation: not timed
    spawned = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"train entry point failed with exit code {proc.returncode}")
    epochs_seen = [(float(w), float(c)) for w, c in EPOCH_LINE.findall(proc.stderr)]
    found = TIMINGS_LINE.search(proc.stderr)
    if not epochs_seen or not found:
        raise SystemExit("bench/train.py: the entry point's log has no 'epoch i/n (..s, cpu ..s)' or 'timings:' "
                         "line; the bench reads them to split the time")
    timings = json.loads(found.group(1))
    return {"wall": wall, "spawned": spawned, "epochs": epochs_seen, "timings": timings, "stderr": proc.stderr,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def overhead_split(run: dict) -> dict[str, float]:
    """The entry point's wall time outside its epochs, by phase (sums to wall - epochs)."""
    t, walls = run["timings"], [w for w, _ in run["epochs"]]
    parts = {
        "process_start_and_cli_imports": t["started"] - run["spawned"],
        "imports_in_train_run": t["imports"],
        "load_and_validate_data": t["load_data"],
        "tensorflow_import_and_strategy": t["tensorflow"],
        "mlflow_run_start_and_data_logging": t["mlflow_before"],
        "feature_preparation": t["prepare"],
        "model_build_and_fit_bookkeeping": t["fit"] - sum(walls),
        "export_bundle": t["export"],
        "mlflow_artifacts_and_pyfunc": t["mlflow_after"],
    }
    parts["process_exit_and_other"] = run["wall"] - sum(walls) - sum(parts.values())
    return {k: round(v, 2) for k, v in parts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--interactions", type=int, default=100_000)
    ap.add_argument("--epochs", type=int, default=None, help="default 3 on the CPU, the seed's 100 with --device gpu")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="config override for both sides, e.g. training.jit_compile=true (repeatable)")
    args = ap.parse_args()
    epochs = args.epochs or (100 if args.device == "gpu" else 3)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # both sides on the CPU, also on a GPU host (before TF loads)

    sampler = None
    if args.device == "gpu":
        from ml.training.gpu_usage import GpuSampler, gpu_problem

        problem = gpu_problem()
        if problem:
            print(json.dumps({"device": "gpu", "error": problem}))
            raise SystemExit(2)
        sampler = GpuSampler()

    from ml.config import load_config, parse_overrides
    from ml.data.loaders import load_folder
    from ml.data.synthetic import generate_synthetic, write_synthetic
    from ml.training.trainer import TwoTowerTrainer, _batched_dataset

    tmp = Path(tempfile.mkdtemp(prefix="towerops-bench-train-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # data, bundle and store: ~200 MB per run
    data = generate_synthetic(n_users=args.users, n_items=args.items, n_interactions=args.interactions, seed=0)
    write_synthetic(data, tmp / "data")
    cfg = load_config(REPO / "configs" / "training.json",
                      {"training.epochs": epochs, "training.patience": epochs, **parse_overrides(args.overrides)})

    if sampler is not None:  # the seed's workload on the GPU: the entry point alone, utilisation sampled
        with sampler:
            run = entry_point(tmp, epochs, args.overrides, "gpu")
        walls = [w for w, _ in run["epochs"]]
        print(json.dumps({
            "device": "gpu", "workload": {"users": args.users, "items": args.items,
                                          "interactions": args.interactions, "epochs": epochs},
            "wall_s": round(run["wall"], 1), "epochs_run": len(walls), "epoch_s_steady": round(steady(walls), 3),
            "fixed_overhead_s": round(run["wall"] - sum(walls), 2), "fixed_overhead_split_s": overhead_split(run),
            "gpu": sampler.report(),
            "goal_wall_min": 30, "wall_min": round(run["wall"] / 60, 2)}, indent=2))
        return

    # the same arrays and batches the trainer feeds (in-process; not part of the entry point's time)
    trainer = TwoTowerTrainer(tmp / "unused", cfg)
    trainer.prepare(load_folder(tmp / "data"))
    x_train, y_train, valid = trainer.training_arrays(trainer.prepared)
    bs = cfg.training.batch_size
    train_ds = _batched_dataset(x_train, y_train, min(bs, len(y_train)), shuffle_seed=cfg.training.seed,
                                drop_remainder=False)
    val_ds = None if valid is None else _batched_dataset(valid[0], valid[1], min(bs, len(valid[1])),
                                                         shuffle_seed=None, drop_remainder=False)
    _, step, eval_step = bare_model_and_steps(trainer, x_train, y_train)
    bare = run_bare(step, eval_step, train_ds, val_ds, epochs)            # before the entry point
    load_during = os.getloadavg()
    run = entry_point(tmp, epochs, args.overrides, "cpu")
    load_during = [max(a, b) for a, b in zip(load_during, os.getloadavg())]
    bare += run_bare(step, eval_step, train_ds, val_ds, max(epochs - 1, 1))  # and after it (traced already)

    n_train = len(y_train)
    entry_walls, entry_cpus = [w for w, _ in run["epochs"]], [c for _, c in run["epochs"]]
    bare_walls, bare_cpus = [w for w, _ in bare], [c for _, c in bare]
    entry_epoch, bare_epoch = steady(entry_walls), steady(bare_walls)
    parts = overhead_split(run)
    fixed = run["wall"] - sum(entry_walls)
    first_extra = entry_walls[0] - entry_epoch  # tracing; negative when a later epoch was slowed by the machine
    result = {
        "workload": {"users": args.users, "items": args.items, "interactions": args.interactions,
                     "train_examples": n_train, "epochs": epochs, "embedding_dim": cfg.embedding_dim,
                     "hidden_units": cfg.model.hidden_units, "id_embedding_dim": cfg.model.id_embedding_dim,
                     "batch_size": bs, "steps_per_execution": cfg.training.steps_per_execution,
                     "jit_compile": cfg.training.jit_compile, "precision": trainer.precision_policy(),
                     "overrides": args.overrides},
        "entry_point": {"wall_s": round(run["wall"], 2), "epoch_s": [round(t, 2) for t in entry_walls],
                        "epoch_cpu_s": [round(t, 2) for t in entry_cpus],
                        "examples_per_s_steady": round(n_train / entry_epoch, 1),
                        "peak_rss_mb": round(run["peak_rss_mb"], 1)},
        "bare_loop": {"epoch_s": [round(t, 2) for t in bare_walls], "epoch_cpu_s": [round(t, 2) for t in bare_cpus],
                      "examples_per_s_steady": round(n_train / bare_epoch, 1)},
        "ratio_entry_vs_bare": round(bare_epoch / entry_epoch, 3),
        "cpu_ratio_entry_vs_bare": round(steady(bare_cpus) / steady(entry_cpus), 3),
        "goal_ratio": 0.95,
        "fixed_overhead_s": round(fixed, 2),
        "fixed_overhead_split_s": parts,
        "first_epoch_extra_s": round(first_extra, 2),
        "goal_fixed_overhead_s": 10,
        "extrapolated_100_epochs_min": round((fixed + max(first_extra, 0.0) + 100 * entry_epoch) / 60, 2),
        "goal_100_epochs_min": 8,
        "load_average_1_5_15": [round(v, 2) for v in load_during],
        "cpu_count": os.cpu_count(),
        "note": "both sides run a validation pass per epoch; the first epoch (tracing) is left out of steady "
                "state; fixed overhead is the wall time outside the epochs; the 100-epoch figure is fixed overhead "
                "+ first-epoch extra + 100 steady epochs; the bare loop's epochs are split before/after the entry "
                "point; cpu_ratio uses process CPU seconds, which other load on the machine disturbs less",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

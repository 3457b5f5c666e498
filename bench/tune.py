"""Distributed training and tuning benchmarks. Prints one JSON object (also written under
bench/results/).

    python bench/tune.py gpu   [--strategy one_device|mirrored] [--epochs 100] [--interactions 100000]
    python bench/tune.py study [--trials 6] [--epochs 3]

`gpu`: the seed's workload (768-d embeddings, [512, 256, 128] towers, 100,000 interactions,
100 epochs) through the train entry point (`python -m pipelines.cli train`, SQLite tracking)
with the chosen strategy, while `nvidia-smi` samples GPU utilisation every 500 ms. Reports
wall time, steady epoch time and the mean GPU utilisation over the epochs after the first
(graph tracing), against the seed's target of 80%. Without nvidia-smi the GPU fields are
null and the run is a CPU reference.

`study`: a small Optuna study (`towerops tune`) on synthetic data: wall time per trial and how
many trials the median pruner stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
GPU_TARGET_PCT = 80.0


class GpuSampler:
    """`nvidia-smi` utilisation samples (monotonic time, % per GPU) in a background process."""

    def __init__(self, interval_ms: int = 500) -> None:
        self.samples: list[tuple[float, list[float]]] = []
        self.available = shutil.which("nvidia-smi") is not None
        self.interval_ms = interval_ms
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "GpuSampler":
        if not self.available:
            return self
        self._proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
             f"-lms={self.interval_ms}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        batch: list[float] = []
        last = time.monotonic()
        for line in self._proc.stdout:
            now = time.monotonic()
            try:
                util = float(line.split(",")[0])
            except ValueError:
                continue
            if batch and now - last > self.interval_ms / 2000:  # a new sampling round
                self.samples.append((last, batch))
                batch = []
            batch.append(util)
            last = now
        if batch:
            self.samples.append((last, batch))

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
        if self._thread is not None:
            self._thread.join(5)

    def mean_between(self, start: float, end: float) -> float | None:
        values = [statistics.mean(u) for t, u in self.samples if start <= t <= end]
        return round(statistics.mean(values), 1) if values else None


def _synthetic(tmp: Path, users: int, items: int, interactions: int) -> Path:
    from ml.data.synthetic import generate_synthetic, write_synthetic

    write_synthetic(generate_synthetic(n_users=users, n_items=items, n_interactions=interactions, seed=0), tmp / "data")
    return tmp / "data"


def bench_gpu(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="towerops-bench-gpu-"))
    data = _synthetic(tmp, args.users, args.items, args.interactions)
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}", TOWEROPS_LOG_DIR=str(tmp / "logs"),
               TOWEROPS_LOG_LEVEL="INFO")
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--data", str(data), "--model-dir", str(tmp / "model"),
           "--set", f"training.epochs={args.epochs}", "--set", f"training.patience={args.epochs}",
           "--set", f"training.distribute_strategy={args.strategy}",
           "--set", f"training.batch_size={args.batch_size}", "--set", f"training.jit_compile={str(args.jit).lower()}"]
    sampler = GpuSampler().start()
    epoch_marks: list[float] = []
    lines: list[str] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if re.search(r"INFO epoch \d+/\d+", line):
            epoch_marks.append(time.monotonic())
    proc.wait()
    wall = time.perf_counter() - t0
    sampler.stop()
    err = "".join(lines)
    if proc.returncode != 0:
        sys.stderr.write(err[-3000:])
        raise SystemExit(f"train entry point failed with exit code {proc.returncode}")
    epoch_s = [float(s) for s in re.findall(r"epoch \d+/\d+ \(([\d.]+)s\)", err)]
    steady = statistics.mean(epoch_s[1:]) if len(epoch_s) > 1 else (epoch_s[0] if epoch_s else None)
    util = sampler.mean_between(epoch_marks[0], epoch_marks[-1]) if sampler.available and len(epoch_marks) > 1 else None
    replicas = re.search(r"(\d+) replica\(s\)", err)
    shutil.rmtree(tmp, ignore_errors=True)
    from ml.config import load_config

    cfg = load_config(REPO / "configs" / "training.json")
    return {
        "workload": {"users": args.users, "items": args.items, "interactions": args.interactions,
                     "epochs_requested": args.epochs, "epochs_run": len(epoch_s), "embedding_dim": cfg.embedding_dim,
                     "hidden_units": cfg.model.hidden_units, "batch_size": args.batch_size, "jit_compile": args.jit,
                     "strategy": args.strategy, "replicas": int(replicas.group(1)) if replicas else 1},
        "wall_s": round(wall, 1),
        "epoch_s_first": round(epoch_s[0], 2) if epoch_s else None,
        "epoch_s_steady": round(steady, 3) if steady else None,
        "gpu": {"available": sampler.available, "mean_utilisation_pct_steady": util, "target_pct": GPU_TARGET_PCT,
                "meets_target": (util >= GPU_TARGET_PCT) if util is not None else None,
                "samples": len(sampler.samples)},
        "note": "utilisation is averaged over the epochs after the first (tracing); without nvidia-smi "
                "this is a CPU reference run",
    }


def bench_study(args: argparse.Namespace) -> dict:
    import yaml

    tmp = Path(tempfile.mkdtemp(prefix="towerops-bench-tune-"))
    data = _synthetic(tmp, args.users, args.items, args.interactions)
    spec = yaml.safe_load((REPO / "configs" / "tuning.yaml").read_text())
    spec.update(n_trials=args.trials, trial_epochs=args.epochs)
    spec["pruner"].update(n_startup_trials=2, n_warmup_steps=1)
    spec["sampler"]["n_startup_trials"] = 3
    (tmp / "tuning.yaml").write_text(yaml.safe_dump(spec))
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}", TOWEROPS_LOG_DIR=str(tmp / "logs"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "tune", "--data", str(data), "--tuning",
                           str(tmp / "tuning.yaml"), "--out", str(tmp / "best_config.json")],
                          cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"tune failed with exit code {proc.returncode}")
    pruned = len(re.findall(r"trial \d+ pruned", proc.stderr))
    complete = len(re.findall(r"trial \d+: val_", proc.stderr))
    best = json.loads((tmp / "best_config.json").read_text())
    shutil.rmtree(tmp, ignore_errors=True)
    return {"workload": {"users": args.users, "items": args.items, "interactions": args.interactions,
                         "trials": args.trials, "trial_epochs": args.epochs},
            "wall_s": round(wall, 1), "s_per_trial": round(wall / max(args.trials, 1), 1),
            "trials_complete": complete, "trials_pruned": pruned,
            "best": {"learning_rate": best["training"]["learning_rate"], "batch_size": best["training"]["batch_size"],
                     "hidden_units": best["model"]["hidden_units"], "temperature": best["model"]["temperature"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    gpu = sub.add_parser("gpu", help="the seed's training workload with GPU utilisation")
    gpu.add_argument("--strategy", default="one_device", choices=["one_device", "mirrored"])
    gpu.add_argument("--users", type=int, default=2000)
    gpu.add_argument("--items", type=int, default=5000)
    gpu.add_argument("--interactions", type=int, default=100_000)
    gpu.add_argument("--epochs", type=int, default=100)
    gpu.add_argument("--batch-size", type=int, default=256)
    gpu.add_argument("--jit", action="store_true", help="training.jit_compile=true (XLA)")
    study = sub.add_parser("study", help="a small Optuna study")
    study.add_argument("--users", type=int, default=300)
    study.add_argument("--items", type=int, default=200)
    study.add_argument("--interactions", type=int, default=6000)
    study.add_argument("--trials", type=int, default=6)
    study.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    result = bench_gpu(args) if args.mode == "gpu" else bench_study(args)
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    (out_dir / f"tune-{args.mode}.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

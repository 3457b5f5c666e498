"""GPU presence and utilisation, sampled with nvidia-smi while something trains (bench/train.py --device gpu).

`gpu_problem()` says in one line why there is no usable GPU (no nvidia-smi, no device listed,
TensorFlow built without CUDA), or None; `GpuSampler` polls `nvidia-smi --query-gpu` in a
background thread and `report()` sums the samples up. nvidia-smi rather than NVML bindings:
it ships with the driver, so nothing extra has to be installed on a GPU host.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

QUERY = ("--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits")


def parse_samples(text: str) -> list[tuple[float, float]]:
    """(utilisation %, memory used MiB) per GPU line of `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`;
    lines that are not two numbers (e.g. "[N/A]") are skipped."""
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2:
            continue
        try:
            out.append((float(parts[0]), float(parts[1])))
        except ValueError:
            continue
    return out


def gpu_problem(nvidia_smi: str = "nvidia-smi", check_tensorflow: bool = True) -> str | None:
    """Why no GPU can be used here, in one line with the fix; None when one can."""
    exe = shutil.which(nvidia_smi)
    if exe is None:
        return (f"no GPU: {nvidia_smi!r} is not on PATH (no NVIDIA driver on this machine); run on a GPU host or "
                "drop --device gpu to measure on the CPU")
    try:
        proc = subprocess.run([exe, *QUERY], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no GPU: {exe} {' '.join(QUERY)} failed ({exc}); check the NVIDIA driver with `nvidia-smi`"
    if proc.returncode != 0 or not parse_samples(proc.stdout):
        detail = (proc.stderr or proc.stdout).strip().splitlines()[:1]
        return f"no GPU: nvidia-smi lists no device (exit {proc.returncode}: {detail[0] if detail else 'no output'})"
    if check_tensorflow:
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            return ("no GPU for TensorFlow: nvidia-smi sees a device but this TensorFlow has no CUDA support; "
                    "install tensorflow[and-cuda]")
    return None


@dataclass
class GpuSampler:
    """Samples GPU utilisation every `interval_s` seconds between `start()` and `stop()` (or as a `with` block)."""

    interval_s: float = 0.5
    nvidia_smi: str = "nvidia-smi"
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (time, util %, MiB), summed over GPUs
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                proc = subprocess.run([self.nvidia_smi, *QUERY], capture_output=True, text=True, timeout=10)
                rows = parse_samples(proc.stdout)
                if rows:
                    self.samples.append((time.time(), sum(u for u, _ in rows) / len(rows), sum(m for _, m in rows)))
                elif proc.returncode != 0:
                    self.errors.append(f"exit {proc.returncode}: {proc.stderr.strip()[:200]}")
            except (OSError, subprocess.TimeoutExpired) as exc:
                self.errors.append(str(exc)[:200])
            self._stop.wait(self.interval_s)

    def start(self) -> "GpuSampler":
        self._thread = threading.Thread(target=self._poll, name="gpu-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> "GpuSampler":
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        return self

    def __enter__(self) -> "GpuSampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def report(self) -> dict[str, Any]:
        """Mean/max utilisation and peak memory over the samples; says so when there are none."""
        if not self.samples:
            why = self.errors[0] if self.errors else "the run ended before the first sample"
            return {"samples": 0, "gpu_util_mean_pct": None, "gpu_util_max_pct": None, "gpu_mem_max_mib": None,
                    "note": f"no utilisation sample: {why}"}
        utils = [u for _, u, _ in self.samples]
        return {"samples": len(self.samples), "interval_s": self.interval_s,
                "gpu_util_mean_pct": round(sum(utils) / len(utils), 1), "gpu_util_max_pct": max(utils),
                "gpu_mem_max_mib": max(m for _, _, m in self.samples), "errors": len(self.errors)}

"""The GPU path of bench/train.py, exercised on a machine without a GPU: the sampler on a stand-in
nvidia-smi, and the clear refusal when there is no GPU at all."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from ml.training.gpu_usage import GpuSampler, gpu_problem, parse_samples

REPO = Path(__file__).resolve().parents[3]


def _fake_smi(folder: Path, body: str) -> Path:
    """An executable `nvidia-smi` stand-in that runs `body` (shell)."""
    exe = folder / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def _wait_for(cond: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "the sampler thread recorded nothing"
        time.sleep(0.01)


def test_parse_samples_reads_each_gpu_line_and_skips_unavailable_values() -> None:
    assert parse_samples("37, 1024\n[N/A], [N/A]\n63, 2048\n") == [(37.0, 1024.0), (63.0, 2048.0)]
    assert parse_samples("") == []


def test_sampler_reports_mean_max_and_peak_memory_of_what_nvidia_smi_printed(tmp_path: Path) -> None:
    # two GPUs: utilisation is their mean, memory their sum
    exe = _fake_smi(tmp_path, 'echo "40, 1000"; echo "60, 500"')
    sampler = GpuSampler(interval_s=0.01, nvidia_smi=str(exe))
    with sampler:
        _wait_for(lambda: len(sampler.samples) >= 3)
    report = sampler.report()
    assert report["samples"] >= 3
    assert report["gpu_util_mean_pct"] == 50.0 and report["gpu_util_max_pct"] == 50.0
    assert report["gpu_mem_max_mib"] == 1500.0


def test_sampler_without_samples_says_why_instead_of_reporting_zeros(tmp_path: Path) -> None:
    exe = _fake_smi(tmp_path, 'echo "NVIDIA-SMI has failed" >&2; exit 9')
    sampler = GpuSampler(interval_s=0.01, nvidia_smi=str(exe))
    with sampler:
        _wait_for(lambda: bool(sampler.errors))
    report = sampler.report()
    assert report["samples"] == 0 and report["gpu_util_mean_pct"] is None
    assert "exit 9" in report["note"] and "NVIDIA-SMI has failed" in report["note"]


def test_no_nvidia_smi_is_a_one_line_reason_with_the_fix(tmp_path: Path) -> None:
    problem = gpu_problem(str(tmp_path / "nvidia-smi"), check_tensorflow=False)
    assert problem is not None and problem.startswith("no GPU:") and "drop --device gpu" in problem


def test_nvidia_smi_listing_no_device_is_reported(tmp_path: Path) -> None:
    exe = _fake_smi(tmp_path, 'echo "No devices were found"; exit 6')
    problem = gpu_problem(str(exe), check_tensorflow=False)
    assert problem is not None and "lists no device" in problem and "No devices were found" in problem


def test_bench_device_gpu_without_a_gpu_exits_2_with_the_reason_in_json(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=f"{tmp_path}:{Path(sys.executable).parent}")  # no nvidia-smi on this PATH
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "train.py"), "--device", "gpu"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["device"] == "gpu" and out["error"].startswith("no GPU:")

"""Helpers for the edge client tests and benches: Debian's Chromium flags, `towerops deploy` into a
local folder, copies of a deployment to tamper with."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from support.helpers import REPO_ROOT

CHROMIUM = "/usr/bin/chromium"
# as root in a closed network: no sandbox, no GPU, no background connections (refused here, slow to fail)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
MODEL = "tt"
BUCKET = "model-artifacts"


def deploy_env(root: Path) -> dict[str, str]:
    """Environment for a `towerops` subprocess deploying to the local folder `root` only."""
    env = {k: v for k, v in os.environ.items() if k not in ("SUPABASE_URL", "TOWEROPS_S3_ENDPOINT_URL",
                                                            "SUPABASE_DB_URL", "TOWEROPS_DEPLOY_DSN")}
    env.update({"TOWEROPS_DEPLOY_DIR": str(root), "TF_CPP_MIN_LOG_LEVEL": "3",
                "PYTHONPATH": f"{REPO_ROOT}:{env.get('PYTHONPATH', '')}"})
    return env


def towerops_deploy(bundle: Path, root: Path, version: str, model: str = MODEL) -> None:
    """`towerops deploy` of a bundle folder into the local backend at `root` (bucket model-artifacts)."""
    config = root / "deployment.yaml"
    if not config.exists():
        config.write_text(yaml.safe_dump({"storage": {"backend": "local", "local_dir": str(root)}}))
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "deploy", "--model-dir", str(bundle), "--version",
                           version, "--model-name", model, "--config", str(config)], cwd=REPO_ROOT,
                          env=deploy_env(root), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def copy_deployment(deployment: Path, dest: Path) -> Path:
    """A copy of a deployment root, to change without touching the original."""
    shutil.copytree(deployment / BUCKET, dest / BUCKET)
    return dest

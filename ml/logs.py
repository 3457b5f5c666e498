"""Rotating log files under `logs/` (training, inference, deployment, monitoring).

Each life-cycle stage logs to its own file at DEBUG and to the terminal at INFO,
so long jobs show progress while the files keep the detail.
"""

from __future__ import annotations

import logging
import os
from logging.handlers import RotatingFileHandler
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_CONFIGURED: set[str] = set()


def log_dir() -> Path:
    return Path(os.environ.get("TOWEROPS_LOG_DIR", "logs"))


def get_logger(stage: str) -> logging.Logger:
    """Return the `towerops.<stage>` logger, writing to `logs/<stage>.log`.

    stage is one of training, inference, deployment, monitoring (any name works).
    """
    name = f"towerops.{stage}"
    logger = logging.getLogger(name)
    if name in _CONFIGURED:
        return logger
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        directory = log_dir()
        directory.mkdir(parents=True, exist_ok=True)
        file_handler = RotatingFileHandler(
            directory / f"{stage}.log", maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8"
        )
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(file_handler)
    except OSError:  # read-only checkout: terminal only
        pass
    console = logging.StreamHandler()
    console.setLevel(getattr(logging, os.environ.get("TOWEROPS_LOG_LEVEL", "INFO").upper(), logging.INFO))
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger.addHandler(console)
    _CONFIGURED.add(name)
    return logger

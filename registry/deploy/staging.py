"""Staging folders in the temp dir (the TF.js export and the local manifest of a deployment,
the bundle a sync downloads), named after their owner so a later run can remove those a
killed run left behind: `towerops-<kind>-<host>-<pid>-*`. A live run's folder is never
touched (its process still exists); another host's is never judged.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ml.logs import get_logger
from registry.deploy.storage.base import owner_is_gone, owner_tag

log = get_logger("deployment")

KINDS = ("deploy", "sync")


@contextmanager
def staging_dir(kind: str) -> Iterator[Path]:
    """A fresh folder `towerops-<kind>-<host>-<pid>-*` in the temp dir, removed on exit."""
    if kind not in KINDS:
        raise ValueError(f"staging kind {kind!r} is not one of {KINDS}")
    path = Path(tempfile.mkdtemp(prefix=f"towerops-{kind}-{owner_tag()}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep_staging(root: str | Path | None = None) -> list[Path]:
    """Remove staging folders whose owner process (on this host) is gone; the removed paths."""
    base = Path(root or tempfile.gettempdir())
    removed: list[Path] = []
    for kind in KINDS:
        for path in base.glob(f"towerops-{kind}-*"):
            owner = path.name[len(f"towerops-{kind}-"):].rsplit("-", 1)[0]  # mkdtemp's suffix has no '-'
            if path.is_dir() and owner_is_gone(owner):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    if removed:
        log.info("removed %d staging folder(s) left by killed runs in %s", len(removed), base)
    return removed

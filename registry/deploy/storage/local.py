"""A local folder as the bucket: `<root>/<bucket>/<key>` (the embedded default, and what
`main` syncs to on a machine with no Supabase configured).

Writes go to a temporary file in the same folder and are renamed into place, so a reader
(or a sync killed midway) never sees half a file (no fsync: atomic for readers, not made
durable against power loss). The temporary file is named `.upload-<host>-<pid>-*` after its
writer, so `sweep_incomplete` removes those a killed run left behind (writer gone) and never a
live run's. `stat` hashes the file: the local backend always verifies content, not metadata.
Cache-Control has no meaning here and is not stored.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable

from registry.deploy.storage.base import (
    BucketNotFound,
    FileDigest,
    ObjectStat,
    PermanentStorageError,
    StorageBackend,
    digest_file,
    owner_is_gone,
    owner_tag,
)

TEMP_PREFIX = ".upload-"


class LocalFolderBackend(StorageBackend):
    """Objects as files under `<root>/<bucket>/`."""

    kind = "local"

    def __init__(self, root: str | Path, bucket: str, create: bool = True) -> None:
        if not bucket or "/" in bucket or bucket in (".", ".."):
            raise ValueError(f"bucket {bucket!r} is not a valid folder name; set supabase.storage_bucket "
                             "to a plain name such as model-artifacts")
        self.root = Path(root).expanduser().resolve()
        self.bucket = bucket
        self.base = self.root / bucket
        self.create = create

    def describe(self) -> str:
        return f"local folder {self.base}"

    def check(self) -> None:
        if not self.base.is_dir():
            if not self.create:
                raise BucketNotFound(f"bucket folder {self.base} does not exist; create it or set "
                                     "storage.local_dir to an existing folder")
            try:
                self.base.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise PermanentStorageError(f"cannot create the bucket folder {self.base}: {exc.strerror}; "
                                            "set storage.local_dir (or TOWEROPS_DEPLOY_DIR) to a writable folder") from None
        if not os.access(self.base, os.W_OK):
            raise PermanentStorageError(f"bucket folder {self.base} is not writable; set storage.local_dir "
                                        "(or TOWEROPS_DEPLOY_DIR) to a writable folder")

    def _path(self, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise ValueError(f"object key {key!r} is not valid (empty or with '.'/'..' segments)")
        return self.base.joinpath(*parts)

    def _atomic_write(self, dest: Path, write) -> None:
        """`write(tmp_path)` then rename into place: readers see the old file or the new one."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{owner_tag()}-", dir=dest.parent)
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; deployed files are for readers
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: Path, digest: FileDigest, content_type: str,
                 cache_control: str | None = None) -> None:
        self._atomic_write(self._path(key), lambda tmp: shutil.copyfile(path, tmp))

    def put_bytes(self, key: str, data: bytes, content_type: str, cache_control: str | None = None) -> None:
        self._atomic_write(self._path(key), lambda tmp: Path(tmp).write_bytes(data))

    def get_bytes(self, key: str) -> bytes | None:
        p = self._path(key)
        return p.read_bytes() if p.is_file() else None

    def stat(self, key: str) -> ObjectStat | None:
        p = self._path(key)
        if not p.is_file():
            return None
        d = digest_file(p)
        return ObjectStat(key, d.size, d.sha256)

    def hash_object(self, key: str) -> FileDigest | None:
        p = self._path(key)
        return digest_file(p) if p.is_file() else None

    def list(self, prefix: str) -> list[ObjectStat]:
        top = self.base / prefix.strip("/") if prefix.strip("/") else self.base
        if not top.is_dir():
            return []
        out = []
        for p in sorted(top.rglob("*")):
            if p.is_file() and not p.name.startswith(TEMP_PREFIX):
                key = p.relative_to(self.base).as_posix()
                st = p.stat()
                out.append(ObjectStat(key, st.st_size, modified=st.st_mtime))
        return out

    def sweep_incomplete(self, prefix: str, started_before: float) -> int:
        """Temporary files under `prefix` whose writer (this host's process) is gone, or that
        are older than `started_before` and a day."""
        top = self.base / prefix.strip("/") if prefix.strip("/") else self.base
        if not top.is_dir():
            return 0
        removed = 0
        for p in top.rglob(f"{TEMP_PREFIX}*"):
            owner = p.name[len(TEMP_PREFIX):].rsplit("-", 1)[0]  # '<host>-<pid>'; mkstemp's suffix has no '-'
            try:
                old = p.stat().st_mtime < min(started_before, time.time()) - 86400
            except OSError:
                continue
            if owner_is_gone(owner) or old:
                p.unlink(missing_ok=True)
                removed += 1
        if removed:
            self._drop_empty({p.parent for p in top.rglob("*") if p.is_dir()} | {top})
        return removed

    def list_dirs(self, prefix: str) -> list[str]:
        top = self.base / prefix.strip("/") if prefix.strip("/") else self.base
        if not top.is_dir():
            return []
        return sorted(p.name for p in top.iterdir() if p.is_dir())

    def delete(self, keys: Iterable[str]) -> None:
        parents = set()
        for key in keys:
            p = self._path(key)
            p.unlink(missing_ok=True)
            parents.add(p.parent)
        self._drop_empty(parents)

    def _drop_empty(self, folders: Iterable[Path]) -> None:
        """Remove emptied folders, deepest first, up to the bucket folder."""
        for parent in sorted(folders, key=lambda x: len(x.parts), reverse=True):
            while parent != self.base and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent

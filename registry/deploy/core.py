"""What every step of a deployment shares: the backend behind the one retry policy, the keys
of a model's folders, the pointer, JSON objects written and read back, the worker pool, and
the versions this process is uploading right now (retention never touches those).

The steps are mixins of `SupabaseDeployer` (registry/deploy/deployer.py): upload.py and
verify.py (the version folder and its manifest), activation.py (pointer and table),
retention.py (what is kept), rollback.py.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from ml.logs import get_logger
from registry.deploy.config import POINTER
from registry.deploy.result import VerificationError, version_folder
from registry.deploy.storage.base import RetryPolicy, StorageBackend, digest_bytes, join_key

if TYPE_CHECKING:
    from registry.deploy.config import DeployConfig
    from registry.deploy.table import ModelVersionsTable

log = get_logger("deployment")

_IN_FLIGHT: set[tuple[str, str]] = set()  # (backend, version prefix) being uploaded in this process
_IN_FLIGHT_LOCK = threading.Lock()


def dump_json(doc: Mapping[str, Any]) -> bytes:
    """The one serialisation of manifests and pointers (their sha256 is recorded)."""
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


class DeployerCore:
    """Storage access shared by the deployment steps; attributes set by SupabaseDeployer."""

    config: DeployConfig
    backend: StorageBackend
    model_name: str
    table: ModelVersionsTable | None
    retry: RetryPolicy
    progress: bool | None
    _checked: bool
    # an incomplete version folder (no manifest) written to within this time may be another
    # process's upload in progress: retention neither counts nor removes it yet
    incomplete_grace_s: float = 3600.0

    def _call(self, what: str, fn: Callable[[], Any], **options: Any) -> Any:
        """Every storage call goes through the one retry policy."""
        return self.retry.call(what, fn, log, **options)

    def prefix(self, version: str, model_name: str | None = None) -> str:
        return join_key(model_name or self.model_name, version_folder(version)) + "/"

    def pointer_key(self, model_name: str | None = None) -> str:
        return join_key(model_name or self.model_name, POINTER)

    def preflight(self) -> None:
        """Storage credentials and bucket first, then the table: fail before changing anything."""
        if self._checked:
            return
        self._call(f"open {self.backend.describe()}", self.backend.check)
        if self.table is not None:
            self.table.ensure_schema()
        self._checked = True

    def read_json(self, key: str) -> dict | None:
        data = self._call(f"read {key}", lambda: self.backend.get_bytes(key))
        if data is None:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def pointer(self, model_name: str | None = None) -> dict | None:
        """The production pointer of a model (None when nothing is deployed)."""
        return self.read_json(self.pointer_key(model_name))

    def _write_json(self, key: str, doc: Mapping[str, Any], cache_control: str) -> str:
        """Write a JSON object and read it back (a pointer or manifest must be exactly this)."""
        data = dump_json(doc)
        digest = digest_bytes(data)

        def put_and_check() -> None:
            self.backend.put_bytes(key, data, "application/json", cache_control)
            back = self.backend.get_bytes(key)
            if back is None or digest_bytes(back).sha256 != digest.sha256:
                raise VerificationError(f"{key} read back differs from what was written")

        self._call(f"write {key}", put_and_check)
        return digest.sha256

    def _parallel(self, jobs: Sequence[Callable[[], Any]]) -> list[Any]:
        """Run jobs on the worker pool; the first exception cancels the rest and is raised."""
        if not jobs:
            return []
        stop = threading.Event()

        def guarded(job: Callable[[], Any]) -> Any:
            if stop.is_set():  # another job failed: start nothing new
                return None
            try:
                return job()
            except BaseException:
                stop.set()
                raise

        with ThreadPoolExecutor(max_workers=self.config.workers) as pool:
            futures = [pool.submit(guarded, j) for j in jobs]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            for f in futures:
                if f.done() and not f.cancelled() and f.exception() is not None:
                    raise f.exception()  # type: ignore[misc]
            return [f.result() for f in futures]

    # -------------------------------------------------------------- versions being uploaded
    @contextmanager
    def _uploading(self, prefix: str) -> Iterator[None]:
        """Mark a version folder as being uploaded by this process while the block runs."""
        item = (self.backend.describe(), prefix)
        with _IN_FLIGHT_LOCK:
            _IN_FLIGHT.add(item)
        try:
            yield
        finally:
            with _IN_FLIGHT_LOCK:
                _IN_FLIGHT.discard(item)

    def _is_uploading(self, prefix: str) -> bool:
        with _IN_FLIGHT_LOCK:
            return (self.backend.describe(), prefix) in _IN_FLIGHT

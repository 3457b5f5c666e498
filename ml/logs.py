"""Logging: one rotating file per life-cycle stage, a console, and quiet libraries.

Modules call `get_logger(stage)` at import time; that only names a logger (no handler,
no file), so importing towerops never writes anything. Entry points (the `towerops`
CLI's callback, the scoring server `ml.inference.serving`, bench scripts) call `configure_logging()`
once when they start. It:

- checks the log folder ($TOWEROPS_LOG_DIR, default `logs/`): a file, or a folder this
  user cannot create or write, is a `LogDirError` naming the path and the fix, raised
  before any work is done (the CLI turns it into exit status 2);
- attaches `<log dir>/<stage>.log` (DEBUG, 10 MB x 5 backups, created on first record)
  to each `towerops.<stage>` logger, and one console handler on stderr at
  $TOWEROPS_LOG_LEVEL (INFO; DEBUG with `verbose`);
- routes third-party records (MLflow, TensorFlow, absl, Python warnings) to
  `<log dir>/libraries.log` and shows only their errors on the console unless `verbose`;
  hides TensorFlow's start-up lines (cuInit, oneDNN and CPU-feature notices, absl's
  preamble) and MLflow's artifact progress bar when stderr is not a terminal.

Files never hold ANSI colour codes (the console only on a terminal), and every handler runs
`ml.secrets.RedactingFilter`, so secrets reach neither.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import math
import os
import re
import sys
import tempfile
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any, Callable, Iterator

from ml.secrets import RedactingFilter

STAGES = ("training", "inference", "deployment", "monitoring")
LIBRARIES = "libraries"  # the file third-party records go to
FILE_MAX_BYTES = 10 * 1024 * 1024
FILE_BACKUPS = 5
FILE_ONLY = {"towerops_file_only": True}  # `log.error(..., extra=FILE_ONLY)`: the caller prints it itself

_FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_CONSOLE_FORMAT = ("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# C++ log lines of TensorFlow/XLA/absl (`I0000 00:00:17.1 123 file.cc:31] ...`, older
# `2024-01-01 12:00:00.1: W tensorflow/...cc:1] ...`) and their well-known companions.
_TF_NATIVE_LINE = re.compile(r"^([IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]"
                             r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] \S+:\d+\]"
                             r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
                             r"|To enable the following instructions: )")
_LIBRARY_LOGGERS = ("mlflow", "alembic", "tensorflow", "absl", "py.warnings")

_installed: list[tuple[logging.Logger, logging.Handler]] = []
_stage_files: dict[str, logging.Handler] = {}
_state: dict[str, Any] = {"dir": None, "verbose": False}


class LogDirError(OSError):
    """The log folder cannot be used; the message names the path and the fix."""


def log_dir() -> Path:
    """$TOWEROPS_LOG_DIR, default `logs` (relative to the working directory)."""
    return Path(os.environ.get("TOWEROPS_LOG_DIR") or "logs")


def console_level(verbose: bool = False) -> int:
    """DEBUG with `verbose`, else $TOWEROPS_LOG_LEVEL (default INFO); a bad name is an error."""
    if verbose:
        return logging.DEBUG
    name = (os.environ.get("TOWEROPS_LOG_LEVEL") or "INFO").strip().upper()
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        raise ValueError(f"TOWEROPS_LOG_LEVEL={name!r} is not a log level: use DEBUG, INFO, WARNING or ERROR")
    return level


def get_logger(stage: str) -> logging.Logger:
    """The `towerops.<stage>` logger (training, inference, deployment, monitoring; any name works).

    Only names the logger: its file `<log dir>/<stage>.log` is attached by `configure_logging`
    (at once when logging is already configured), never at import time.
    """
    logger = logging.getLogger(f"towerops.{stage}")
    if _state["dir"] is not None and stage not in _stage_files:
        _attach_stage_file(stage)
    return logger


def strip_ansi(text: str) -> str:
    """`text` without ANSI escape sequences (colours, cursor moves)."""
    return _ANSI.sub("", text)


def metric_text(value: Any, spec: str = ".4f", why: str = "") -> str:
    """A metric for a person to read: `format(value, spec)`, or "not computed (why)" for None/NaN/inf."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return format(value, spec)
    return f"not computed ({why})" if why else "not computed"


def check_log_dir(directory: str | Path) -> Path:
    """Create `directory` if needed and prove this user can write a file in it; else `LogDirError`."""
    path = Path(directory)
    fix = "set TOWEROPS_LOG_DIR to a folder this user can write, or unset it to log under ./logs"
    if path.exists() and not path.is_dir():
        raise LogDirError(f"log folder {path} (TOWEROPS_LOG_DIR) is a file, not a folder: {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise LogDirError(f"log folder {path} (TOWEROPS_LOG_DIR) is not usable ({exc.strerror or exc}): {fix}") from None
    for stage in (*STAGES, LIBRARIES):
        existing = path / f"{stage}.log"
        if existing.exists() and (existing.is_dir() or not os.access(existing, os.W_OK)):
            raise LogDirError(f"log file {existing} is not writable: remove it or make it writable, or {fix}")
    return path


def configure_logging(verbose: bool = False, directory: str | Path | None = None) -> Path:
    """Attach the log files and the console (idempotent: a second call re-binds them); returns the folder.

    Raises LogDirError for an unusable folder and ValueError for a bad $TOWEROPS_LOG_LEVEL,
    before touching any handler.
    """
    folder = check_log_dir(log_dir() if directory is None else directory)
    level = console_level(verbose)
    _reset()
    _state.update(dir=folder, verbose=verbose)

    console = _ConsoleHandler()
    console.setLevel(level)
    base = logging.getLogger("towerops")
    base.setLevel(logging.DEBUG)
    base.propagate = False
    _add(base, console)
    libraries = _stage_files[LIBRARIES] = _file_handler(folder / f"{LIBRARIES}.log", logging.INFO)
    library_log = logging.getLogger(f"towerops.{LIBRARIES}")
    library_log.setLevel(logging.INFO)
    library_log.propagate = False
    _add(library_log, libraries)
    for stage in STAGES:
        _attach_stage_file(stage)
    for name in list(logging.root.manager.loggerDict):  # stages named by get_logger before now
        if name.startswith("towerops.") and name.count(".") == 1:
            get_logger(name.split(".", 1)[1])

    library_console = _ConsoleHandler()
    library_console.setLevel(logging.INFO if verbose else logging.ERROR)
    logging.root.setLevel(logging.INFO if verbose else logging.WARNING)
    _add(logging.root, libraries)
    _add(logging.root, library_console)
    logging.captureWarnings(True)
    _quiet_libraries(verbose)
    return folder


# ------------------------------------------------------------------ handlers
class _PlainFormatter(logging.Formatter):
    """The standard format with ANSI escapes removed (library messages carry colours)."""

    def format(self, record: logging.LogRecord) -> str:
        return strip_ansi(super().format(record))


class _ConsoleHandler(logging.StreamHandler):
    """stderr as it is at each record (test runners and CliRunner swap sys.stderr);
    colours kept only on a terminal; FILE_ONLY records skipped."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter(*_CONSOLE_FORMAT))
        self.addFilter(RedactingFilter())  # secrets never reach the terminal

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "towerops_file_only", False) and super().filter(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        isatty = getattr(sys.stderr, "isatty", None)
        return text if isatty is not None and isatty() else strip_ansi(text)


def _file_handler(path: Path, level: int) -> logging.Handler:
    handler = RotatingFileHandler(path, maxBytes=FILE_MAX_BYTES, backupCount=FILE_BACKUPS, encoding="utf-8",
                                  delay=True)
    handler.setLevel(level)
    handler.setFormatter(_PlainFormatter(_FILE_FORMAT))
    handler.addFilter(RedactingFilter())  # secrets never reach a log file
    return handler


def _attach_stage_file(stage: str) -> None:
    logger = logging.getLogger(f"towerops.{stage}")
    logger.setLevel(logging.DEBUG)
    handler = _stage_files[stage] = _file_handler(_state["dir"] / f"{stage}.log", logging.DEBUG)
    _add(logger, handler)


def _add(logger: logging.Logger, handler: logging.Handler) -> None:
    logger.addHandler(handler)
    _installed.append((logger, handler))


def _reset() -> None:
    """Remove and close what an earlier call installed."""
    for logger, handler in _installed:
        logger.removeHandler(handler)
        handler.close()
    _installed.clear()
    _stage_files.clear()
    _state["dir"] = None


# ------------------------------------------------------------------ libraries
def _quiet_libraries(verbose: bool) -> None:
    """Environment and import hooks that keep TensorFlow and MLflow quiet unless `verbose`."""
    if not _stderr_is_terminal():
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # tqdm frames in a file are noise
    if not verbose and "tensorflow" not in sys.modules:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # cuInit, device and retracing lines from C++
    if "mlflow" in sys.modules:
        _route_mlflow()
    else:
        _AfterImport.install("mlflow", after=_route_mlflow)
    if not verbose and "tensorflow" not in sys.modules:
        _AfterImport.install("tensorflow", around=_tensorflow_import_filter)


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def _route_mlflow() -> None:
    """MLflow keeps its own stderr handler: quiet it to errors (unless verbose) and copy to libraries.log."""
    libraries = _stage_files.get(LIBRARIES)
    for name in ("mlflow", "alembic"):
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.NOTSET if _state["verbose"] else logging.ERROR)
        if libraries is not None and libraries not in logger.handlers:
            _add(logger, libraries)


@contextlib.contextmanager
def _tensorflow_import_filter() -> Iterator[None]:
    """Capture file descriptor 2 while TensorFlow imports (its C++ start-up lines ignore
    TF_CPP_MIN_LOG_LEVEL); known notices go to libraries.log, anything else back to stderr."""
    with contextlib.ExitStack() as stack:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no real stderr: nothing to filter
            yield
            return
        captured = stack.enter_context(tempfile.TemporaryFile())
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            _replay_stderr(captured.read().decode("utf-8", errors="replace"))


def _replay_stderr(text: str) -> None:
    library_log = logging.getLogger(f"towerops.{LIBRARIES}")
    for line in text.splitlines(keepends=True):
        if _TF_NATIVE_LINE.match(line):
            library_log.info("tensorflow: %s", line.rstrip())
        else:
            os.write(2, line.encode("utf-8", errors="replace"))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs code around (or after) the first import of one top-level module, lazily."""

    def __init__(self, name: str, around: Callable[[], Any] | None, after: Callable[[], None] | None) -> None:
        self.name, self.around, self.after = name, around, after

    @classmethod
    def install(cls, name: str, around: Callable[[], Any] | None = None,
                after: Callable[[], None] | None = None) -> None:
        sys.meta_path[:] = [f for f in sys.meta_path if not (isinstance(f, cls) and f.name == name)]
        sys.meta_path.insert(0, cls(name, around, after))

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]  # once
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _HookedLoader(spec.loader, self.around, self.after)
        return spec


class _HookedLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, around: Callable[[], Any] | None, after: Callable[[], None] | None) -> None:
        self._loader, self._around, self._after = loader, around, after

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, get_filename, is_package, ...
        return getattr(self._loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with self._around() if self._around else contextlib.nullcontext():
            self._loader.exec_module(module)
        if self._after:
            self._after()

"""Resolving what a user passes as a model (folder, runs:/, models:/, pyfunc folder) to a bundle folder."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

MODEL_URI_HELP = ("pass a model bundle folder, runs:/<run_id>/recommender, models:/<name>/<version> "
                  "or models:/<name>@<alias>")


# ---------------------------------------------------------------- inputs
def _has_scheme(text: str) -> bool:
    from urllib.parse import urlparse

    scheme = urlparse(text).scheme
    return len(scheme) > 1  # "C:\..." is a Windows drive, not a scheme


def resolve_model(model: str | Path, download_dir: str | Path | None = None) -> Path:
    """The local bundle folder of a model given as folder or MLflow URI (downloaded if needed).

    Raises FileNotFoundError / ValueError with the URI and what to pass instead.
    Downloads go to `download_dir` (default: a new temporary folder).
    """
    text = str(model).strip()
    if not text:
        raise ValueError(f"no model given: {MODEL_URI_HELP}")
    if not _has_scheme(text) or text.startswith("file:"):
        path = Path(text.removeprefix("file://").removeprefix("file:"))
        if not path.exists():
            raise FileNotFoundError(f"model {text!r} does not exist: {MODEL_URI_HELP}")
        return _bundle_dir(path, text)
    if not text.startswith(("runs:/", "models:/")) and "://" not in text:
        raise ValueError(f"model URI {text!r} is not understood: {MODEL_URI_HELP}")
    import mlflow
    from mlflow.exceptions import MlflowException

    from ml.settings import ensure_tracking_uri

    ensure_tracking_uri()
    dst = Path(download_dir) if download_dir else Path(tempfile.mkdtemp(prefix="towerops-eval-model-"))
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=str(dst)))
    except MlflowException as exc:
        raise ValueError(f"model URI {text!r} does not exist or cannot be read ({exc.message.splitlines()[0]}); "
                         f"{MODEL_URI_HELP} (tracking URI {mlflow.get_tracking_uri()})") from None
    except OSError as exc:
        raise FileNotFoundError(f"model URI {text!r} could not be downloaded: {exc}; {MODEL_URI_HELP}") from None
    return _bundle_dir(local, text)


def _pyfunc_bundle(path: Path) -> Path | None:
    """The `model_dir` artifact of a towerops pyfunc folder (MLmodel names where it was stored)."""
    import yaml

    mlmodel = path / "MLmodel"
    if not mlmodel.is_file():
        return None
    try:
        spec = yaml.safe_load(mlmodel.read_text()) or {}
        rel = spec["flavors"]["python_function"]["artifacts"]["model_dir"]["path"]
    except (KeyError, TypeError, yaml.YAMLError):
        return None
    return path / rel


def _bundle_dir(path: Path, label: str) -> Path:
    from ml.bundle.load import load_bundle

    candidates = [_pyfunc_bundle(path), path / "artifacts" / "model_dir", path]
    found = next((c for c in candidates if c is not None and (c / "metadata.json").is_file()), None)
    if found is None:
        raise FileNotFoundError(f"model {label!r} holds no towerops model bundle (no metadata.json in {path} nor in "
                                f"the pyfunc's model_dir artifact): {MODEL_URI_HELP}")
    load_bundle(found)  # names any missing file
    return found


def bundle_dir_from_uri(model_uri: str) -> Path:
    """Download a logged recommender and return its bundle folder (the `model_dir` artifact,
    wherever the pyfunc's MLmodel says it was stored)."""
    from ml.bundle.resolve import resolve_model

    return resolve_model(model_uri)

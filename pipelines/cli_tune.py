"""`towerops tune`: the Optuna search of ml/tracking/tuning.py (MLproject entry point `tune`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.common import USER_ERRORS, fail, info, opt


def _optional_number(text: str, flag: str, integer: bool) -> Any:
    """'' (MLproject's empty default) means not given; otherwise a positive number."""
    if text is None or not str(text).strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{flag}={text!r} is not a number: pass e.g. {flag}={'20' if integer else '3600'}") from None
    if integer and (not value.is_integer() or value < 1):
        raise ValueError(f"{flag}={text!r} must be a whole number >= 1")
    if not integer and value <= 0:
        raise ValueError(f"{flag}={text!r} must be > 0 seconds")
    return int(value) if integer else value


def tune(
    data: Annotated[str | None, typer.Option(help="data folder (CSV/Parquet), postgresql:// DSN or env:VAR "
                                                 "(default: data.source of towerops.yaml)")] = None,
    tuning: Annotated[str | None, typer.Option(help="search space and study settings (YAML; default: the tuning "
                                                    "section of towerops.yaml)")] = None,
    config: Annotated[str | None, typer.Option(help="base training config each trial starts from (default: the "
                                                    "training section of towerops.yaml)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override the base config, "
                                                      "e.g. --set training.epochs=30")] = None,
    n_trials: Annotated[str, typer.Option(help="number of trials (default: the tuning file's n_trials)")] = "",
    timeout: Annotated[str, typer.Option(help="stop starting trials after this many seconds (default: the file's)")] = "",
    out: Annotated[Path, typer.Option(help="where to write the best config (JSON)")] = Path("best_config.json"),
    run_name: Annotated[str, typer.Option(help="MLflow run name of the study")] = "tune",
    storage: Annotated[str, typer.Option(help="Optuna RDB storage shared by workers on several hosts, e.g. "
                                              "postgresql://user@host/optuna or env:VAR (default: storage of the "
                                              "tuning file; none: a study of this process only)")] = "",
    study_name: Annotated[str, typer.Option(help="study the workers share (default: the tuning file's "
                                                 "study_name, else towerops-tune)")] = "",
) -> None:
    """Search hyperparameters with Optuna; each trial is a nested MLflow run; writes best_config.json."""
    from ml.config import parse_overrides
    from ml.logs import metric_text
    from ml.platform import data_source
    from ml.tracking.tuning import run_tuning

    try:
        result = run_tuning(data_source(opt(data)), opt(tuning), opt(config), parse_overrides(set_ or []),
                            n_trials=_optional_number(n_trials, "--n-trials", integer=True),
                            timeout_s=_optional_number(timeout, "--timeout", integer=False),
                            out=out, run_name=run_name, storage=opt(storage), study_name=opt(study_name))
    except USER_ERRORS as exc:
        fail(exc)
    best = metric_text(result.best_value, why="no trial completed")
    left = "" if result.status == "FINISHED" else " (the study is not complete: the worker completing it ends the run)"
    info(f"run {result.run_id} {result.status}{left}: best {result.metric}={best} (trial {result.best_trial}, run "
         f"{result.best_run_id}); trials {result.states}; wrote {result.best_config_path}")


def register(app: typer.Typer) -> None:
    """Add `towerops tune`."""
    app.command("tune")(tune)

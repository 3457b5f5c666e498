"""`towerops tune`: the Optuna search of ml/tuning.py (MLproject entry point `tune`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


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


def register(app: typer.Typer) -> None:
    """Add `towerops tune`."""
    from pipelines.cli import USER_ERRORS, err, fail

    @app.command("tune")
    def tune(
        data: str = typer.Option(..., help="data folder (CSV/Parquet) or postgresql:// DSN"),
        tuning: Path = typer.Option(Path("configs/tuning.yaml"), help="search space and study settings (YAML)"),
        config: Path | None = typer.Option(Path("configs/training.json"),
                                              help="base training config each trial starts from"),
        set_: list[str] = typer.Option([], "--set", help="override the base config, e.g. --set training.epochs=30"),
        n_trials: str = typer.Option("", help="number of trials (default: the tuning file's n_trials)"),
        timeout: str = typer.Option("", help="stop starting trials after this many seconds (default: the file's)"),
        out: Path = typer.Option(Path("best_config.json"), help="where to write the best config (JSON)"),
        run_name: str = typer.Option("tune", help="MLflow run name of the study"),
    ) -> None:
        """Search hyperparameters with Optuna; each trial is a nested MLflow run; writes best_config.json."""
        from ml.config import parse_overrides
        from ml.tracking.tuning import run_tuning

        try:
            result = run_tuning(data, tuning, config, parse_overrides(set_),
                                n_trials=_optional_number(n_trials, "--n-trials", integer=True),
                                timeout_s=_optional_number(timeout, "--timeout", integer=False),
                                out=out, run_name=run_name)
        except USER_ERRORS as exc:
            fail(exc)
        err.print(f"run {result.run_id} FINISHED: best {result.metric}={result.best_value:.4f} (trial "
                  f"{result.best_trial}, run {result.best_run_id}); trials {result.states}; wrote "
                  f"{result.best_config_path}")

"""The `towerops` command line. Thin: parse arguments, call the stage functions in
`ml`, `registry` and `monitoring`, turn their errors into a message and exit code 2.
MLproject entry points call this module (`python -m pipelines.cli ...`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

app = typer.Typer(help="towerops: train, evaluate, register, deploy and monitor a two-tower recommender.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Data: synthetic generation and validation.", no_args_is_help=True)
app.add_typer(data_app, name="data")
err = Console(stderr=True)


def fail(exc: BaseException, code: int = 2) -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


USER_ERRORS = (ValueError, FileNotFoundError, KeyError, ConnectionError, PermissionError)


@data_app.command("synth")
def data_synth(
    users: int = typer.Option(1000, help="number of users"),
    items: int = typer.Option(800, help="number of items"),
    interactions: int = typer.Option(40000, help="number of swipes"),
    seed: int = typer.Option(0, help="random seed"),
    out: Path = typer.Option(Path("data/synthetic"), help="output folder"),
    fmt: str = typer.Option("csv", "--format", help="csv or parquet"),
    shift: float = typer.Option(0.0, help="distribution shift in [0, 1] (drift tests)"),
) -> None:
    """Write a synthetic dataset (users, items, interactions, oracle ranking) to a folder."""
    from ml.data.synthetic import generate_synthetic, write_synthetic

    try:
        data = generate_synthetic(n_users=users, n_items=items, n_interactions=interactions, seed=seed, shift=shift)
        paths = write_synthetic(data, out, fmt=fmt)
    except USER_ERRORS as exc:
        fail(exc)
    err.print(f"wrote {', '.join(str(p) for p in paths.values())}")


@data_app.command("validate")
def data_validate(source: str = typer.Argument(..., help="data folder or postgresql:// DSN")) -> None:
    """Check a dataset against the schema; lists every problem at once."""
    from ml.data.loaders import load_dataset

    try:
        ds = load_dataset(source)
    except USER_ERRORS as exc:
        fail(exc)
    err.print(f"ok: {ds.row_counts()}")


@app.command("train")
def train(
    data: str = typer.Option(..., help="data folder (CSV/Parquet) or postgresql:// DSN"),
    config: Path | None = typer.Option(Path("configs/training.json"), help="training config (JSON/YAML)"),
    set_: list[str] = typer.Option([], "--set", help="override, e.g. --set training.epochs=5 (repeatable)"),
    model_dir: Path | None = typer.Option(None, help="where to write the model bundle (default: a temp folder)"),
    run_name: str = typer.Option("train", help="MLflow run name"),
) -> None:
    """Train the two-tower model in an MLflow run."""
    from ml.config import parse_overrides
    from ml.tracking.training import train_run

    try:
        result = train_run(data, config, parse_overrides(set_), model_dir=model_dir, run_name=run_name)
    except USER_ERRORS as exc:
        fail(exc)
    if not result.run_id:
        err.print("worker finished: the chief logged the MLflow run and wrote the bundle")
        return
    err.print(f"run {result.run_id} FINISHED; model {result.model_uri}; bundle {result.model_dir}")


@app.command("main")
def main(
    users: int = typer.Option(1000), items: int = typer.Option(800), interactions: int = typer.Option(40000),
    seed: int = typer.Option(0), epochs: int = typer.Option(20),
    config: Path | None = typer.Option(Path("configs/training.json")),
    set_: list[str] = typer.Option([], "--set"),
    data_dir: Path = typer.Option(Path("data/synthetic")),
    model_dir: Path = typer.Option(Path("models/two_tower")),
) -> None:
    """The main job: synthetic data -> train (and the later stages)."""
    from ml.config import parse_overrides
    from pipelines.workflow import run_main

    try:
        overrides = {"training.epochs": epochs, **parse_overrides(set_)}
        run_main(users=users, items=items, interactions=interactions, seed=seed, config=config,
                 overrides=overrides, data_dir=data_dir, model_dir=model_dir)
    except USER_ERRORS as exc:
        fail(exc)


@app.command("recommend")
def recommend(
    user_id: str = typer.Argument(...),
    model_dir: Path = typer.Option(Path("models/two_tower")),
    top_k: int = typer.Option(10),
) -> None:
    """Top-k recommendations for a user from a local model bundle."""
    from ml.inference.engine import RealtimeInferenceEngine

    try:
        recs = RealtimeInferenceEngine(model_dir).get_recommendations(user_id, top_k=top_k)
    except USER_ERRORS as exc:
        fail(exc)
    for r in recs:
        typer.echo(f"{r['rank']:>3}  {r['item_id']}  {r['score']:.4f}")


def _register_extensions() -> None:
    """Each area adds its commands from its own module (`register(app)`)."""
    import importlib

    for name in ("pipelines.cli_evaluate", "pipelines.cli_server", "pipelines.cli_monitor",
                 "pipelines.cli_registry", "pipelines.cli_serve", "pipelines.cli_tune", "pipelines.cli_sync"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(app)


_register_extensions()


if __name__ == "__main__":
    sys.exit(app())

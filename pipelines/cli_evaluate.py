"""`towerops evaluate`, `towerops compare`, `towerops ab assign|analyze`: argument parsing only."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def _empty_to_none(value: str | None) -> str | None:
    return value if value is not None and value.strip() else None


def _float_or_none(value: str | None, name: str) -> float | None:
    value = _empty_to_none(value)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--{name}={value!r} is not a number, e.g. 0.2") from None


def register(app: typer.Typer) -> None:
    """Add the evaluation, comparison and A/B commands to the `towerops` app."""
    from pipelines.cli import USER_ERRORS, err, fail

    ab_app = typer.Typer(help="A/B tests: assign users to arms, analyse logged outcomes.", no_args_is_help=True)
    app.add_typer(ab_app, name="ab")

    @app.command("evaluate")
    def evaluate(
        model: str = typer.Option(..., help="bundle folder, runs:/<run_id>/recommender, models:/<name>/<version> or "
                                            "models:/<name>@<alias>"),
        data: str = typer.Option(..., help="data folder (CSV/Parquet) or postgresql:// DSN the model was trained on"),
        ks: str = typer.Option("10,50,100", help="cut-offs K, comma-separated"),
        metrics: str = typer.Option("", help="metric names, comma-separated (empty: all): recall, precision, ndcg, "
                                             "map, hit_rate, mrr, coverage, novelty, auc"),
        compare_to: str = typer.Option("", help="champion model to compare this one (the challenger) against"),
        validation_split: str = typer.Option("", help="held-out share per user (default: the bundle's)"),
        seed: int = typer.Option(0, help="seed of the random baseline and the bootstrap"),
        n_bootstrap: int = typer.Option(1000, help="bootstrap resamples for --compare-to"),
        oracle: bool = typer.Option(True, help="score the synthetic generator's oracle when the data has one"),
        run_name: str = typer.Option("evaluate", help="MLflow run name"),
        json_out: Path | None = typer.Option(None, help="also write the flat metrics as JSON here"),
    ) -> None:
        """Offline evaluation on the time-split held-out data, with baselines and segments, as an MLflow run."""
        from ml.tracking.evaluation import evaluate_run

        try:
            result = evaluate_run(model, data, ks=ks, metrics=metrics, compare_to=_empty_to_none(compare_to),
                                  validation_split=_float_or_none(validation_split, "validation-split"), seed=seed,
                                  n_bootstrap=n_bootstrap, oracle=oracle, run_name=run_name)
        except USER_ERRORS as exc:
            fail(exc)
        m = result.metrics
        k0 = result.evaluation.ks[0]
        shown = [f"ndcg_at_{k0}", f"popular.ndcg_at_{k0}", f"lift.ndcg_at_{k0}", f"oracle_ratio.ndcg_at_{k0}",
                 f"recall_at_{k0}", "auc"]
        for key in shown:
            if key in m:
                typer.echo(f"{key:<28}{m[key]:.4f}")
        if result.comparison is not None:
            typer.echo(result.comparison.summary(f"ndcg_at_{k0}"))
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps({k: v for k, v in m.items()}, indent=2, default=float))
        err.print(f"run {result.run_id} FINISHED; artifacts {', '.join(result.artifacts[:2])} ...")

    @app.command("compare")
    def compare(
        champion: str = typer.Option(..., help="the model in production (folder or MLflow URI)"),
        challenger: str = typer.Option(..., help="the candidate (folder or MLflow URI)"),
        data: str = typer.Option(..., help="data folder or postgresql:// DSN both models can score"),
        ks: str = typer.Option("10,50,100", help="cut-offs K"),
        metrics: str = typer.Option("", help="metric names (empty: all)"),
        validation_split: str = typer.Option("", help="held-out share (default: the champion's)"),
        n_bootstrap: int = typer.Option(1000, help="bootstrap resamples"),
        confidence: float = typer.Option(0.95, help="confidence level of the intervals"),
        decide_on: str = typer.Option("", help="metric that decides the winner tag (default ndcg at the smallest K)"),
        seed: int = typer.Option(0),
        run_name: str = typer.Option("compare", help="MLflow run name"),
    ) -> None:
        """Challenger vs champion: per-metric deltas with bootstrap CIs, table and plots, as an MLflow run."""
        from ml.tracking.evaluation import compare_run

        try:
            result = compare_run(champion, challenger, data, ks=ks, metrics=metrics,
                                 validation_split=_float_or_none(validation_split, "validation-split"),
                                 n_bootstrap=n_bootstrap, confidence=confidence, seed=seed,
                                 decide_on=_empty_to_none(decide_on), run_name=run_name)
        except USER_ERRORS as exc:
            fail(exc)
        overall = result.comparison.overall()
        for row in overall.itertuples(index=False):
            ci = f"[{row.ci_low:+.4f}, {row.ci_high:+.4f}]" if row.ci_low == row.ci_low else "(no CI)"
            typer.echo(f"{row.metric:<18}{row.champion:>9.4f}{row.challenger:>9.4f}{row.delta:>+9.4f} {ci:<22}{row.winner}")
        err.print(f"run {result.run_id} FINISHED; on {result.decided_on}: {result.winner}")

    @ab_app.command("assign")
    def ab_assign(
        user: list[str] = typer.Option([], "--user", help="a user id (repeatable)"),
        users: Path | None = typer.Option(None, help="CSV/Parquet with a user_id column"),
        arms: str = typer.Option("control=50,treatment=50", help="arms and weights, e.g. control=90,treatment=10"),
        salt: str = typer.Option(..., help="experiment name; a new salt reshuffles users"),
        out: Path | None = typer.Option(None, help="write user_id,arm,bucket CSV here (default: stdout)"),
    ) -> None:
        """Deterministic arm for each user: sha256(salt:user_id), stable across restarts and machines."""
        from ml.data.loaders import read_table_file
        from ml.evaluation.abtest import assign_users

        try:
            ids = list(user)
            if users is not None:
                if not users.is_file():
                    raise FileNotFoundError(f"users file {users} does not exist: pass a CSV/Parquet with a user_id column")
                frame = read_table_file(users)
                if "user_id" not in frame.columns:
                    raise ValueError(f"{users}: no user_id column (found {list(frame.columns)})")
                ids.extend(frame["user_id"].astype(str).tolist())
            if not ids:
                raise ValueError("no users given: pass --user ID (repeatable) or --users FILE")
            table = assign_users(ids, arms, salt)
        except USER_ERRORS as exc:
            fail(exc)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(out, index=False)
            counts = table["arm"].value_counts().to_dict()
            err.print(f"wrote {len(table)} assignments to {out}: {counts}")
        else:
            typer.echo(table.to_csv(index=False), nl=False)

    @ab_app.command("analyze")
    def ab_analyze(
        outcomes: Path = typer.Option(..., help="outcomes file: user_id, arm, item_id, decision (like/nope) or label"),
        control: str = typer.Option("", help="control arm (default: 'control', else the first)"),
        alpha: float = typer.Option(0.05, help="significance level"),
        power: float = typer.Option(0.8, help="power for the sample-size check"),
        mde: float = typer.Option(0.05, help="minimum detectable relative change in like rate"),
        min_per_arm: int = typer.Option(100, help="never decide with fewer swipes than this per arm"),
        unit: str = typer.Option("swipe", help="swipe (two-proportion z-test) or user (delta method, clustered)"),
        arms: str = typer.Option("", help="configured split, e.g. control=50,treatment=50, for a sample-ratio check"),
        json_out: Path | None = typer.Option(None, help="also write the result as JSON here"),
    ) -> None:
        """Like rate per arm, lift, confidence interval, p-value; warns when the sample is too small to decide."""
        from ml.evaluation.abtest import analyze_outcomes, format_result, read_outcomes

        try:
            frame = read_outcomes(outcomes)
            result = analyze_outcomes(frame, control=_empty_to_none(control), alpha=alpha, power=power, mde=mde,
                                      min_per_arm=min_per_arm, unit=unit, arms=_empty_to_none(arms))
        except USER_ERRORS as exc:
            fail(exc)
        typer.echo(format_result(result))
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(result.to_dict(), indent=2, default=float))

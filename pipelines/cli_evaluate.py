"""`towerops evaluate`, `towerops compare`, `towerops ab assign|analyze`: argument parsing only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.common import USER_ERRORS, OutputFormat, fail, info, is_json, opt, print_json

ab_app = typer.Typer(help="A/B tests: assign users to arms, analyse logged outcomes.", no_args_is_help=True)

FORMAT = typer.Option("--format", help="text or json (all metrics, NaN as null)")


def _float_or_none(value: str | None, name: str) -> float | None:
    value = opt(value)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--{name}={value!r} is not a number, e.g. 0.2") from None


def evaluate(
    model: Annotated[str, typer.Option(help="bundle folder, runs:/<run_id>/recommender, models:/<name>/<version> or "
                                            "models:/<name>@<alias>")],
    data: Annotated[str, typer.Option(help="data folder (CSV/Parquet) or postgresql:// DSN the model was trained on")],
    ks: Annotated[str, typer.Option(help="cut-offs K, comma-separated")] = "10,50,100",
    metrics: Annotated[str, typer.Option(help="metric names, comma-separated (empty: all): recall, precision, ndcg, "
                                              "map, hit_rate, mrr, coverage, novelty, auc")] = "",
    compare_to: Annotated[str, typer.Option(help="champion model to compare this one (the challenger) against")] = "",
    validation_split: Annotated[str, typer.Option(help="held-out share per user (default: the bundle's)")] = "",
    seed: Annotated[int, typer.Option(help="seed of the random baseline and the bootstrap")] = 0,
    n_bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for --compare-to")] = 1000,
    oracle: Annotated[bool, typer.Option(help="score the synthetic generator's oracle when the data has one")] = True,
    run_name: Annotated[str, typer.Option(help="MLflow run name")] = "evaluate",
    json_out: Annotated[Path | None, typer.Option(help="also write the flat metrics as JSON here")] = None,
    fmt: Annotated[OutputFormat, FORMAT] = OutputFormat.text,
) -> None:
    """Offline evaluation on the time-split held-out data, with baselines and segments, as an MLflow run."""
    from ml.logs import metric_text
    from ml.tracking.evaluation import evaluate_run

    try:
        result = evaluate_run(model, data, ks=ks, metrics=metrics, compare_to=opt(compare_to),
                              validation_split=_float_or_none(validation_split, "validation-split"), seed=seed,
                              n_bootstrap=n_bootstrap, oracle=oracle, run_name=run_name)
    except USER_ERRORS as exc:
        fail(exc)
    m = result.metrics
    k0 = result.evaluation.ks[0]
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({k: v for k, v in m.items()}, indent=2, default=float))
    if is_json(fmt):
        print_json({"run_id": result.run_id, "metrics": m,
                    "comparison": _overall_rows(result.comparison) if result.comparison is not None else None})
    else:
        shown = [f"ndcg_at_{k0}", f"popular.ndcg_at_{k0}", f"als.ndcg_at_{k0}", f"ease.ndcg_at_{k0}",
                 f"lift_over_popular.ndcg_at_{k0}", f"lift_over_best_baseline.ndcg_at_{k0}",
                 f"oracle_ratio.ndcg_at_{k0}", f"recall_at_{k0}", "auc"]
        for key in shown:
            if key in m:
                typer.echo(f"{key:<28}{metric_text(m[key], why='undefined on this data')}")
        if result.comparison is not None:
            typer.echo(result.comparison.summary(f"ndcg_at_{k0}"))
    info(f"run {result.run_id} FINISHED; artifacts {', '.join(result.artifacts[:2])} ...")


def _overall_rows(comparison: Any) -> list[dict[str, Any]]:
    return comparison.overall().to_dict(orient="records")


def compare(
    champion: Annotated[str, typer.Option(help="the model in production (folder or MLflow URI)")],
    challenger: Annotated[str, typer.Option(help="the candidate (folder or MLflow URI)")],
    data: Annotated[str, typer.Option(help="data folder or postgresql:// DSN both models can score")],
    ks: Annotated[str, typer.Option(help="cut-offs K")] = "10,50,100",
    metrics: Annotated[str, typer.Option(help="metric names (empty: all)")] = "",
    validation_split: Annotated[str, typer.Option(help="held-out share (default: the champion's)")] = "",
    n_bootstrap: Annotated[int, typer.Option(help="bootstrap resamples")] = 1000,
    confidence: Annotated[float, typer.Option(help="confidence level of the intervals")] = 0.95,
    decide_on: Annotated[str, typer.Option(help="metric that decides the winner tag "
                                                "(default ndcg at the smallest K)")] = "",
    seed: Annotated[int, typer.Option()] = 0,
    run_name: Annotated[str, typer.Option(help="MLflow run name")] = "compare",
    fmt: Annotated[OutputFormat, FORMAT] = OutputFormat.text,
) -> None:
    """Challenger vs champion: per-metric deltas with bootstrap CIs, table and plots, as an MLflow run."""
    from ml.tracking.evaluation import compare_run

    try:
        result = compare_run(champion, challenger, data, ks=ks, metrics=metrics,
                             validation_split=_float_or_none(validation_split, "validation-split"),
                             n_bootstrap=n_bootstrap, confidence=confidence, seed=seed,
                             decide_on=opt(decide_on), run_name=run_name)
    except USER_ERRORS as exc:
        fail(exc)
    rows = _overall_rows(result.comparison)
    if is_json(fmt):
        print_json({"run_id": result.run_id, "decided_on": result.decided_on, "winner": result.winner, "rows": rows})
    else:
        for line in comparison_lines(rows):
            typer.echo(line)
    info(f"run {result.run_id} FINISHED; on {result.decided_on}: {result.winner}")


def comparison_lines(rows: list[dict[str, Any]]) -> list[str]:
    """metric, champion, challenger, delta, CI, winner per row; "n/c" (not computed) where a value is missing."""
    from ml.logs import metric_text

    def cell(value: Any, spec: str) -> str:
        text = metric_text(value, spec)
        return text if text != "not computed" else "n/c"

    lines = []
    for r in rows:
        low, high = metric_text(r.get("ci_low"), "+.4f"), metric_text(r.get("ci_high"), "+.4f")
        ci = f"[{low}, {high}]" if "not computed" not in (low, high) else "(no CI: no paired users)"
        lines.append(f"{r['metric']:<18}{cell(r.get('champion'), '.4f'):>9}{cell(r.get('challenger'), '.4f'):>9}"
                     f"{cell(r.get('delta'), '+.4f'):>9} {ci:<22}{r.get('winner', '')}")
    if any("n/c" in line for line in lines):
        lines.append("(n/c: not computed, the metric is undefined for that model on this data)")
    return lines


def ab_assign(
    salt: Annotated[str, typer.Option(help="experiment name; a new salt reshuffles users")],
    user: Annotated[list[str] | None, typer.Option("--user", help="a user id (repeatable)")] = None,
    users: Annotated[Path | None, typer.Option(help="CSV/Parquet with a user_id column")] = None,
    arms: Annotated[str, typer.Option(help="arms and weights, e.g. control=90,treatment=10")] = "control=50,treatment=50",
    out: Annotated[Path | None, typer.Option(help="write user_id,arm,bucket CSV here (default: stdout)")] = None,
) -> None:
    """Deterministic arm for each user: sha256(salt:user_id), stable across restarts and machines."""
    from ml.data.loaders import read_user_ids
    from ml.evaluation.abtest import assign_users

    try:
        ids = list(user or [])
        if users is not None:
            ids.extend(read_user_ids(users))
        if not ids:
            raise ValueError("no users given: pass --user ID (repeatable) or --users FILE")
        table = assign_users(ids, arms, salt)
    except USER_ERRORS as exc:
        fail(exc)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
        counts = table["arm"].value_counts().to_dict()
        info(f"wrote {len(table)} assignments to {out}: {counts}")
    else:
        typer.echo(table.to_csv(index=False), nl=False)


def ab_analyze(
    outcomes: Annotated[Path, typer.Option(help="outcomes file: user_id, arm, item_id, decision (like/nope) or label")],
    control: Annotated[str, typer.Option(help="control arm (default: 'control', else the first)")] = "",
    alpha: Annotated[float, typer.Option(help="significance level")] = 0.05,
    power: Annotated[float, typer.Option(help="power for the sample-size check")] = 0.8,
    mde: Annotated[float, typer.Option(help="minimum detectable relative change in like rate")] = 0.05,
    min_per_arm: Annotated[int, typer.Option(help="never decide with fewer swipes than this per arm")] = 100,
    unit: Annotated[str, typer.Option(help="swipe (two-proportion z-test) or user (delta method, clustered)")] = "swipe",
    arms: Annotated[str, typer.Option(help="configured split, e.g. control=50,treatment=50, "
                                           "for a sample-ratio check")] = "",
    json_out: Annotated[Path | None, typer.Option(help="also write the result as JSON here")] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="text or json")] = OutputFormat.text,
    from_log: Annotated[Path | None, typer.Option(help="prediction log of `towerops serve --challenger-uri` (file or "
                                                       "folder): each user's arm comes from it, so --outcomes needs "
                                                       "only user_id, item_id, decision")] = None,
) -> None:
    """Like rate per arm, lift, confidence interval, p-value; warns when the sample is too small to decide."""
    from ml.evaluation.abtest import analyze_outcomes, format_result, outcomes_from_log, read_outcomes

    versions: dict[str, list[str]] = {}
    try:
        if from_log is not None:
            frame, logged, notes = outcomes_from_log(from_log, outcomes)
            versions = logged.versions
            for note in notes:
                info(note)
        else:
            frame = read_outcomes(outcomes)
        result = analyze_outcomes(frame, control=opt(control), alpha=alpha, power=power, mde=mde,
                                  min_per_arm=min_per_arm, unit=unit, arms=opt(arms))
    except USER_ERRORS as exc:
        fail(exc)
    payload = {**result.to_dict(), **({"versions": versions} if from_log is not None else {})}
    if is_json(fmt):
        print_json(payload)
    else:
        typer.echo(format_result(result))
        for arm, served in versions.items():
            typer.echo(f"arm {arm}: model version(s) {', '.join(served)}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2, default=float))


def register(app: typer.Typer) -> None:
    """Add the evaluation, comparison and A/B commands to the `towerops` app."""
    app.command("evaluate")(evaluate)
    app.command("compare")(compare)
    app.add_typer(ab_app, name="ab")
    ab_app.command("assign")(ab_assign)
    ab_app.command("analyze")(ab_analyze)

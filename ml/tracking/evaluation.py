"""Evaluation and champion/challenger comparison as MLflow runs.

Everything that can fail on bad input (model URI, data, K, metric names, held-out
split) is resolved and computed BEFORE the run starts, so a bad call leaves no
half-written evaluation behind; logging happens only once all numbers exist.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ml.logs import get_logger

if TYPE_CHECKING:
    from ml.data.schema import Dataset
    from ml.data.synthetic import SyntheticData
    from ml.evaluation.compare import Comparison
    from ml.evaluation.evaluate import Evaluation
from ml.bundle.resolve import _has_scheme, resolve_model

log = get_logger("training")

@dataclass
class EvalResult:
    run_id: str
    model_uri: str
    model_dir: Path | None
    metrics: dict[str, float]
    evaluation: "Evaluation"
    comparison: "Comparison | None" = None
    artifacts: list[str] = field(default_factory=list)


@dataclass
class CompareResult:
    run_id: str
    champion_uri: str
    challenger_uri: str
    metrics: dict[str, float]
    comparison: "Comparison"
    winner: str
    decided_on: str


def load_eval_data(data: "str | Path | Dataset | SyntheticData", oracle: bool = True,
                   data_config: dict | None = None) -> tuple["Dataset", "SyntheticData | None", str]:
    """(dataset, synthetic generator data for the oracle or None, source label); files are read with the
    model's `data.*` (rating scale, like threshold)."""
    from ml.data.loaders import describe_source, is_postgres_dsn, load_dataset
    from ml.data.schema import Dataset
    from ml.data.synthetic import SyntheticData
    from ml.evaluation.evaluate import synthetic_from_folder
    from ml.secrets import resolve_secret_ref

    if isinstance(data, SyntheticData):
        return data.dataset, data if oracle else None, "synthetic"
    if isinstance(data, Dataset):
        return data, None, str(data.sources.get("interactions", "in-memory"))
    label = describe_source(str(data))  # env:VAR as written, a literal DSN without its password
    text = resolve_secret_ref(str(data), "data source") or ""
    data_config = dict(data_config or {})
    dataset = load_dataset(text, rating_scale=data_config.get("rating_scale", "auto"),
                           like_threshold=data_config.get("like_threshold"))
    if is_postgres_dsn(text):
        return dataset, None, label
    synthetic = synthetic_from_folder(text, dataset) if oracle else None
    return dataset, synthetic, label


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


# ---------------------------------------------------------------- runs
def evaluate_run(
    model: str | Path,
    data: "str | Path | Dataset | SyntheticData",
    ks: Sequence[int] | str | None = None,
    metrics: Sequence[str] | str | None = None,
    compare_to: str | Path | None = None,
    nested: bool = False,
    run_name: str = "evaluate",
    experiment: str | None = None,
    validation_split: float | None = None,
    seed: int = 0,
    n_bootstrap: int = 1000,
    oracle: bool = True,
    synthetic: "SyntheticData | None" = None,
    model_uri: str | None = None,
    test_split: float | None = None,
) -> EvalResult:
    """Evaluate a model (bundle folder or MLflow URI) on the test part with baselines, segments and oracle; log a run.

    `compare_to` (a champion) adds a champion/challenger comparison, this model being
    the challenger. `model_uri` labels a local bundle with the URI it was logged as.
    A model downloaded from MLflow is removed again afterwards (`EvalResult.model_dir` is None).
    """
    from ml.evaluation.metrics import parse_ks, parse_metrics

    ks, names = parse_ks(ks), parse_metrics(metrics)       # bad K / metric: error before anything else
    with tempfile.TemporaryDirectory(prefix="towerops-eval-models-") as downloads:
        model_dir = resolve_model(model, Path(downloads) / "model")           # bad URI: same
        champion_dir = resolve_model(compare_to, Path(downloads) / "champion") if compare_to else None
        return _evaluate_run(model, model_dir, champion_dir, data, ks, names, compare_to, nested, run_name,
                             experiment, {"validation_split": validation_split, "test_split": test_split}, seed,
                             n_bootstrap, oracle, synthetic, model_uri)


def _evaluate_run(model: Any, model_dir: Path, champion_dir: Path | None, data: Any, ks: tuple[int, ...],
                  names: tuple[str, ...], compare_to: Any, nested: bool, run_name: str, experiment: str | None,
                  shares: dict[str, float | None], seed: int, n_bootstrap: int, oracle: bool,
                  synthetic: "SyntheticData | None", model_uri: str | None) -> EvalResult:
    import mlflow

    from ml.bundle.load import load_bundle
    from ml.data.fingerprint import dataset_fingerprint
    from ml.evaluation.compare import compare_evaluations, write_outputs
    from ml.evaluation.evaluate import evaluate_bundle
    from ml.evaluation.report import write_evaluation_outputs
    from ml.tracking.runs import start_run

    bundle = load_bundle(model_dir)
    dataset, synth, source = load_eval_data(data, oracle=oracle, data_config=bundle.config.get("data"))
    if synthetic is not None and oracle:
        synth = synthetic
    evaluation = evaluate_bundle(bundle, dataset, ks, names, synthetic=synth, seed=seed, **shares)
    comparison = None
    if champion_dir is not None:
        champ = evaluate_bundle(load_bundle(champion_dir), dataset, ks, names, baselines=(), seed=seed,
                                validation_split=evaluation.split.validation_split,
                                test_split=evaluation.split.test_split)
        comparison = compare_evaluations(champ, evaluation, n_bootstrap=n_bootstrap, seed=seed)
    fingerprint = dataset_fingerprint(dataset)
    label = model_uri or str(model)
    flat = dict(evaluation.metrics)
    if comparison is not None:
        flat.update(comparison.flat_metrics())

    with tempfile.TemporaryDirectory(prefix="towerops-eval-") as tmp:
        eval_paths = write_evaluation_outputs(evaluation, Path(tmp) / "evaluation")
        cmp_paths = write_outputs(comparison, Path(tmp) / "comparison", str(compare_to), label) if comparison else {}
        with start_run(run_name=run_name, experiment=experiment, nested=nested,
                       tags={"towerops.step": "evaluate"}) as run:
            run_id = run.info.run_id
            params: dict[str, Any] = {
                "eval.model_uri": label, "eval.data_source": source, "eval.data_hash": fingerprint["hash"],
                "eval.ks": ",".join(map(str, ks)), "eval.metrics": ",".join(names),
                "eval.part": evaluation.split.part, "eval.validation_split": evaluation.split.validation_split,
                "eval.test_split": evaluation.split.test_split, "eval.seed": seed,
                "eval.oracle": "oracle" in evaluation.summaries, "eval.baselines": ",".join(evaluation.baselines),
            }
            for name, why in evaluation.skipped.items():
                params[f"eval.skipped.{name}"] = why[:500]
            if compare_to:
                params["eval.compare_to"] = str(compare_to)
                params["eval.n_bootstrap"] = n_bootstrap
            mlflow.log_params(params)
            tags = {"towerops.model_uri": label, "towerops.data_hash": fingerprint["hash"],
                    "towerops.feature_schema_hash": str(bundle.metadata.get("feature_schema_hash", ""))}
            if label.startswith("runs:/"):
                tags["towerops.evaluated_run_id"] = label.split("/")[1]
            if compare_to:
                tags["towerops.champion_uri"] = str(compare_to)
            mlflow.set_tags(tags)
            mlflow.log_metrics(_finite(flat), synchronous=True)
            mlflow.log_artifacts(str(eval_paths["json"].parent), "evaluation")
            if cmp_paths:
                mlflow.log_artifacts(str(cmp_paths["csv"].parent), "comparison")
        artifacts = [f"evaluation/{p.name}" for p in eval_paths.values()] + [f"comparison/{p.name}" for p in cmp_paths.values()]
    log.info("evaluation run %s: %d metrics for %s on %s", run_id, len(_finite(flat)), label, source)
    local_dir = model_dir if not _has_scheme(str(model)) else None
    return EvalResult(run_id=run_id, model_uri=label, model_dir=local_dir, metrics=flat, evaluation=evaluation,
                      comparison=comparison, artifacts=artifacts)


def compare_run(
    champion: str | Path,
    challenger: str | Path,
    data: "str | Path | Dataset | SyntheticData",
    ks: Sequence[int] | str | None = None,
    metrics: Sequence[str] | str | None = None,
    nested: bool = False,
    run_name: str = "compare",
    experiment: str | None = None,
    validation_split: float | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    decide_on: str | None = None,
    test_split: float | None = None,
) -> CompareResult:
    """Challenger vs champion on the same held-out data, logged as a run with table and plots.

    The run's tag `towerops.winner` is challenger / champion / tie on `decide_on`
    (default: ndcg at the smallest K), by whether its CI excludes zero.
    """
    import mlflow

    from ml.bundle.load import load_bundle
    from ml.evaluation.compare import compare_evaluations, write_outputs
    from ml.evaluation.evaluate import evaluate_bundle
    from ml.evaluation.metrics import metric_key, parse_ks, parse_metrics
    from ml.evaluation.protocol import split_shares
    from ml.tracking.runs import start_run

    ks, names = parse_ks(ks), parse_metrics(metrics)
    decide_on = decide_on or metric_key("ndcg" if "ndcg" in names else names[0], ks[0])
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1), e.g. 0.95")
    with tempfile.TemporaryDirectory(prefix="towerops-compare-models-") as downloads:
        champ_bundle = load_bundle(resolve_model(champion, Path(downloads) / "champion"))
        chall_bundle = load_bundle(resolve_model(challenger, Path(downloads) / "challenger"))
        champ_bundle.user_tower, chall_bundle.user_tower  # noqa: B018 - load the towers before the folder goes
    dataset, _, source = load_eval_data(data, oracle=False)
    shares = split_shares(champ_bundle.config, validation_split, test_split)
    ev_a = evaluate_bundle(champ_bundle, dataset, ks, names, baselines=(), seed=seed, **shares)
    ev_b = evaluate_bundle(chall_bundle, dataset, ks, names, baselines=(), seed=seed, **shares)
    comparison = compare_evaluations(ev_a, ev_b, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    overall = comparison.overall().set_index("metric")
    if decide_on not in overall.index:
        raise ValueError(f"decide_on={decide_on!r} is not among the compared metrics: {list(overall.index)}")
    winner = str(overall.loc[decide_on, "winner"])
    flat = comparison.flat_metrics()
    with tempfile.TemporaryDirectory(prefix="towerops-compare-") as tmp:
        paths = write_outputs(comparison, Path(tmp) / "comparison", str(champion), str(challenger))
        with start_run(run_name=run_name, experiment=experiment, nested=nested,
                       tags={"towerops.step": "compare"}) as run:
            run_id = run.info.run_id
            mlflow.log_params({"compare.champion": str(champion), "compare.challenger": str(challenger),
                               "compare.data_source": source, "compare.ks": ",".join(map(str, ks)),
                               "compare.metrics": ",".join(names), "compare.part": ev_a.split.part,
                               "compare.validation_split": shares["validation_split"],
                               "compare.test_split": shares["test_split"],
                               "compare.n_bootstrap": n_bootstrap, "compare.confidence": confidence,
                               "compare.decide_on": decide_on, "compare.seed": seed})
            mlflow.set_tags({"towerops.champion_uri": str(champion), "towerops.challenger_uri": str(challenger),
                             "towerops.winner": winner, "towerops.decided_on": decide_on})
            mlflow.log_metrics(_finite(flat), synchronous=True)
            mlflow.log_artifacts(str(paths["csv"].parent), "comparison")
    log.info("compare run %s: %s", run_id, comparison.summary(decide_on))
    return CompareResult(run_id=run_id, champion_uri=str(champion), challenger_uri=str(challenger), metrics=flat,
                         comparison=comparison, winner=winner, decided_on=decide_on)

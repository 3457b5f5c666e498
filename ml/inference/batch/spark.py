"""Batch scoring at scale through `mlflow.pyfunc.spark_udf`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

# ---------------------------------------------------------------------------- spark
def score_with_spark(spark: Any, model_uri: str, users: Any, top_k: int = 10, env_manager: str = "local") -> Any:
    """The same batch scoring on Spark: `mlflow.pyfunc.spark_udf` over the logged recommender.

    `users` is a Spark DataFrame with a `user_id` column (optionally top_k, exclude_seen);
    returns it with `recommendations: struct<items: array<string>, scores: array<double>>`.
    """
    import mlflow.pyfunc
    from pyspark.sql.functions import col, struct

    from ml.inference.engine import parse_top_k

    top_k = parse_top_k(top_k)
    if "user_id" not in users.columns:
        raise ValueError(f"users DataFrame needs a user_id column; it has {users.columns}")
    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type="items array<string>, scores array<double>",
                                  env_manager=env_manager, params={"top_k": top_k, "output": "lists"})
    inputs = [c for c in ("user_id", "top_k", "exclude_seen") if c in users.columns]
    return users.withColumn("recommendations", udf(struct(*[col(c) for c in inputs])))

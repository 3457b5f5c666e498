"""Scale-out: the logged recommender scores users on Apache Spark (local mode) through spark_udf."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from support.helpers import mlflow_env

from ml.inference.engine import RealtimeInferenceEngine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOG_MODEL = """
import json, sys
import mlflow
from ml.tracking.runs import start_run
from ml.tracking.training import log_recommender
with start_run(run_name="spark-test"):
    info = log_recommender(sys.argv[1])
print(json.dumps({"path": mlflow.artifacts.download_artifacts(info.model_uri)}))
"""


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory):
    import shutil

    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.fail("Spark needs a Java runtime (17+): apt-get install openjdk-17-jre-headless")
    from pyspark.sql import SparkSession

    logs = tmp_path_factory.mktemp("spark_logs")
    saved = {k: os.environ.get(k) for k in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "TOWEROPS_LOG_DIR",
                                            "TOWEROPS_PREDICTION_LOG")}
    # the Python workers inherit these from the JVM, which inherits them from this process
    os.environ.update({"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
                       "TOWEROPS_LOG_DIR": str(logs), "TOWEROPS_PREDICTION_LOG": str(logs / "predictions.jsonl")})
    session = (SparkSession.builder.master("local[1]").appName("towerops-test")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2")
               .config("spark.driver.memory", "1g").config("spark.sql.execution.arrow.pyspark.enabled", "true")
               .getOrCreate())
    session.towerops_logs = logs
    try:
        yield session
    finally:
        session.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_spark_udf_scores_users_like_the_engine(spark, tiny_model_dir, tmp_path) -> None:
    from ml.inference.batch.spark import score_with_spark

    proc = subprocess.run([sys.executable, "-c", LOG_MODEL, str(tiny_model_dir)], cwd=tmp_path,
                          env=mlflow_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_path = json.loads(proc.stdout.strip().splitlines()[-1])["path"]

    engine = RealtimeInferenceEngine(tiny_model_dir)
    users = engine.bundle.user_ids[:40]
    frame = spark.createDataFrame([(u,) for u in users], "user_id string").repartition(2)
    scored = score_with_spark(spark, model_path, frame, top_k=6).collect()
    assert sorted(r.user_id for r in scored) == sorted(users)
    for row in scored:
        want = engine.get_recommendations(row.user_id, top_k=6)
        assert list(row.recommendations["items"]) == [r["item_id"] for r in want]
        np.testing.assert_allclose(row.recommendations["scores"], [r["score"] for r in want], rtol=1e-6)

    logged = [json.loads(line) for line in (spark.towerops_logs / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["user_id"] for r in logged) == sorted(users)  # the workers sample to the prediction log too

    with pytest.raises(ValueError, match="needs a user_id column"):
        score_with_spark(spark, model_path, spark.createDataFrame([("x",)], "uid string"))

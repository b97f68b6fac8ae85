"""The logged MLflow model over a Spark DataFrame (mlflow.pyfunc.spark_udf on local[2]) = the predict stage.

Needs the `spark` extra (`pip install -e ".[spark]"`) and a Java runtime; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyspark", reason="pyspark is not installed: `pip install -e '.[spark]'` runs this test")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs a Java runtime (java on PATH or JAVA_HOME)", allow_module_level=True)

from pipeline.stages.predict import predict  # noqa: E402
from test_inference import make_stance_model, seed_sentences  # noqa: E402

PROBS = ["p_negative", "p_neutral", "p_positive"]


def many_sentences(n: int) -> list[str]:
    """n distinct real Arabic sentences: the seed sentences and their halves, recombined."""
    base = seed_sentences()
    out = list(base)
    i = 0
    while len(out) < n:
        a, b = base[i % len(base)], base[(7 * i + 3) % len(base)]
        out.append(" ".join(a.split()[: 4 + i % 9] + b.split()[-(3 + i % 5):]))
        i += 1
    return out[:n]


def test_spark_udf_matches_the_predict_stage(spark, make_cfg, tmp_path):
    import mlflow

    from pipeline.core import tracking
    from pipeline.models.store import log_stance_model

    model_dir = make_stance_model(tmp_path / "model")
    cfg = make_cfg("train")
    with tracking.start_run(cfg, "spark-model", log_params=False):
        info = log_stance_model(model_dir)

    texts = many_sentences(300)
    sentences = pd.DataFrame({"article_id": [f"a{i // 10}" for i in range(len(texts))],
                              "sentence_id": [f"s{i}" for i in range(len(texts))], "text": texts})
    sentences.to_json(tmp_path / "sentences.jsonl", orient="records", lines=True, force_ascii=False)
    out = tmp_path / "stage.parquet"
    predict(make_cfg("predict", f"input={tmp_path}/sentences.jsonl", f"output={out}", f"model_uri={info.model_uri}"))
    stage = pd.read_parquet(out).set_index("sentence_id")

    udf = mlflow.pyfunc.spark_udf(
        spark, info.model_uri, env_manager="local",
        result_type="label string, p_negative double, p_neutral double, p_positive double",
    )
    frame = spark.createDataFrame(sentences).repartition(2)
    got = (frame.withColumn("prediction", udf("text"))
           .select("sentence_id", "prediction.*").toPandas().set_index("sentence_id").loc[stage.index])
    assert len(got) == len(texts) == len(stage)
    assert (got["label"] == stage["label"]).all()
    np.testing.assert_allclose(got[PROBS].to_numpy(), stage[PROBS].to_numpy(), atol=1e-6)

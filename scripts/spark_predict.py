"""spark-submit entry point of the spark_predict stage (pipeline/stages/spark_predict.py).

    spark-submit --master yarn scripts/spark_predict.py input=hdfs:///articles/ output=hdfs:///stance/ \
        model_uri=models:/stance-seeds@champion tracking.uri=http://mlflow.example:5000

Arguments are the stage's config overrides, as for `python -m pipeline spark_predict`.
"""

import sys
from pathlib import Path

# The repository's package when it is not installed on the driver (spark-submit runs this file directly).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cli.main import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["spark_predict", *sys.argv[1:]]))

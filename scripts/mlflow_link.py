"""Print the link to the experiment's runs in the headline view of the MLflow UI (`make ui` prints it first).

    .venv/bin/python scripts/mlflow_link.py [key=value ...]     # the same overrides as the stages (tracking.*)

The view (score columns and charts first) is stored in the experiment by every run (pipeline/core/tracking.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.core import tracking  # noqa: E402
from pipeline.core.config import compose_config  # noqa: E402


def main(argv: list[str]) -> int:
    cfg = compose_config("promote", argv)
    mlflow = tracking.setup(cfg)  # creates the experiment (and its view) in a fresh store
    experiment = mlflow.get_experiment_by_name(str(cfg.tracking.experiment))
    print(f"the runs, headline scores first: {tracking.headline_url(cfg, experiment.experiment_id)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

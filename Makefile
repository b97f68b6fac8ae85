# Every target creates the virtual environment on first use, so on a fresh machine
# `make run` and `make test` are the whole set-up.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: venv run run-offline test ui bench clean

venv: $(STAMP)

# A bare torch requirement would pull a multi-GB CUDA build: take the CPU wheel unless some torch
# (e.g. a CUDA build the user installed on purpose) is already in the environment.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

## The main job: the whole pipeline on the seed corpus with the default AraBERT model.
run: $(STAMP)
	$(PY) -m pipeline all $(ARGS)

## The same, fully offline, on the tiny locally-built BERT (smoke runs, not quality).
run-offline: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pipeline all model=tiny $(ARGS)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q $(PYTEST_ARGS)

ui: $(STAMP)
	$(PY) scripts/mlflow_link.py
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000

bench: $(STAMP)
	$(PY) bench/run_all.py $(ARGS)

clean:
	rm -rf work outputs .pytest_cache

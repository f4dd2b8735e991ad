# Two commands: `make demo` (main job on the bundled sample) and `make test` (the whole suite).
# Both create/refresh the local virtual environment .venv from the pinned requirements first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_DATASETS_OFFLINE := 1
export HF_HUB_OFFLINE := 1
export DS_ACCELERATOR := cpu
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.torch_extensions
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test corpus-demo bench clean

$(STAMP): requirements.txt setup.cfg setup.py jamdata/loader/_textfill.c
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/jamdata run --config configs/demo.yaml $(ARGS)

corpus-demo: $(STAMP)
	$(BIN)/jamdata run --config configs/demo.yaml --corpus ../shared/corpus $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check jamdata jamtrain pipelines schemas tests benchmarks scripts
	$(BIN)/ruff format --check jamdata jamtrain pipelines schemas tests benchmarks scripts
	$(BIN)/mypy jamdata pipelines schemas jamtrain
	$(BIN)/python -m pytest -n 2 -q $(ARGS)

bench: $(STAMP)
	$(BIN)/pip install -q -c requirements.txt -r requirements-bench.txt
	$(BIN)/pip install -q --no-deps --upgrade --target .bench-deps -r requirements-bench-isolated.txt
	@for b in benchmarks/bench_*.py; do echo "== $$b"; PYTHONPATH=.bench-deps $(BIN)/python $$b || exit 1; done

clean:
	rm -rf out .pytest_cache

# The model factory. `make nightly` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export FACTORY_HOME ?= $(CURDIR)/.factory

# torch first and pinned: on a machine without CUDA, 2.13.0 resolves to the CPU build,
# and installing it before the rest stops another package from pulling the CUDA wheels.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup nightly smoke test test-fast clean help

help:
	@echo "make nightly   set up if needed, then run tonight's DAG on embedded defaults"
	@echo "make test      set up if needed, then run every test"
	@echo "make setup     create $(VENV) and install the project (idempotent)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[factory,test]" "$(TORCH_SPEC)"
	$(PY) -c "import pipelines, torch, airflow.sdk, onnxruntime, modelopt.onnx.quantization; print('setup ok: torch', torch.__version__)"
	touch $(STAMP)

nightly: setup
	$(VENV)/bin/factory nightly

smoke: setup
	$(VENV)/bin/factory nightly --profile smoke

test: setup
	$(PY) -m pytest -n 2 --dist loadscope --durations=25

test-fast: setup
	$(PY) -m pytest -m "not integration and not slow"

clean:
	rm -rf $(VENV) .factory .pytest_cache

SHELL := /bin/bash
# avl_lab — quick start: `make sweep`, `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test sweep lint clean postgres lock

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Torch first: keep a torch the user already has (e.g. a CUDA build), else pin the CPU wheel,
# so that pip never resolves a multi-GB CUDA torch on its own.
# The `lmms` extra (lmms-eval, for its integration test) requires torchvision; where none is
# installed pip takes PyPI's CUDA build, which does not import beside a CPU torch (and breaks
# transformers' image code). avl_lab needs no torchvision: one that does not import is removed.
$(STAMP): $(PY) pyproject.toml constraints.txt
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[dev,lmms]" --constraint constraints.txt --constraint <($(PY) -c "from importlib.metadata import version; print('torch==' + version('torch').split('+')[0])")
	@$(PY) -c "import sys; from avl_lab.torchvision_check import torchvision_problem as p; sys.exit(p() is not None)" || \
	  { echo "note: uninstalling torchvision: it does not import beside this torch (README: lmms-eval)"; \
	    $(PY) -m pip uninstall -q -y torchvision; }
	touch $(STAMP)

install: $(STAMP)

# The multi-worker sweep test starts a real PostgreSQL server: install it when missing
# (Debian/Ubuntu, as root); without it that one test skips with its reason.
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) ; } || \
	  echo "note: PostgreSQL could not be installed; its sweep test will skip"

test: install postgres
	$(PY) -m pytest -q

sweep: install
	$(PY) -m avl_lab.sweep --study docvqa_pareto

lint: install
	$(PY) -m ruff check avl_lab tests benchmarks examples

clean:
	rm -rf $(VENV) build *.egg-info

# After upgrading a dependency and a passing `make test`: pin what was tested (torch excluded).
lock: install
	{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v -E '^(torch|avl_lab)=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

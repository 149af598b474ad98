# The two commands a new user needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.amlight-installed

.PHONY: demo test test-slow install clean-runs

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The offline default: synthetic scenes + tiny backbone, trained on the CPU: stage 1, then stage 2.
demo: $(STAMP)
	$(PY) -m amlight fit --config configs/quickstart/stage1.yaml
	$(PY) -m amlight fit --config configs/quickstart/stage2.yaml
	@echo "Done. Look at it: $(VENV)/bin/tensorboard --logdir runs/quickstart  (samples also in runs/quickstart/*/samples/)"

test: $(STAMP)
	$(PY) -m pytest -q

# Heavy checks (end-to-end training runs); CI runs them in a bounded form.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean-runs:
	rm -rf runs

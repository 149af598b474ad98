# The two commands a new user needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.amlight-installed
QS := runs/quickstart
DEMO_EVAL_PAIRS ?= 8

.PHONY: demo test test-slow install clean-runs benchmark

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
	$(PY) -m amlight generate --stage1 $(QS)/stage1/checkpoints/last.ckpt --adapter $(QS)/stage2/checkpoints/last.ckpt \
		--pairs data/synthetic/val/pairs.json --out $(QS)/generate --triplets
	$(PY) -m amlight evaluate --stage1 $(QS)/stage1/checkpoints/last.ckpt --adapter $(QS)/stage2/checkpoints/last.ckpt \
		--max-pairs $(DEMO_EVAL_PAIRS) --out $(QS)/evaluate
	@echo ""
	@echo "Done."
	@echo "  generated triplets (exemplar | target labels | result): $(QS)/generate/grid.png"
	@echo "  benchmark table on $(DEMO_EVAL_PAIRS) pairs: $(QS)/evaluate/results.md   (grid: $(QS)/evaluate/grid.png)"
	@echo "  training curves, samples, attention maps: $(VENV)/bin/tensorboard --logdir $(QS)"

# The full quickstart benchmark (all 64 validation pairs, every mode) on the demo's checkpoints.
benchmark: $(STAMP)
	$(PY) -m amlight evaluate --stage1 $(QS)/stage1/checkpoints/last.ckpt --adapter $(QS)/stage2/checkpoints/last.ckpt \
		--out runs/evaluate/quickstart

test: $(STAMP)
	$(PY) -m pytest -q

# Heavy checks (end-to-end training runs); CI runs them in a bounded form.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean-runs:
	rm -rf runs

# The two commands a new user needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.amlight-installed
QS := runs/quickstart
DEMO_EVAL_PAIRS ?= 8

.PHONY: demo test test-slow install clean-runs benchmark rehearse-sd15 gpu-check docs

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The offline default: synthetic scenes + tiny backbone, trained on the CPU: stage 1, then stage 2.
# Re-runnable: --ckpt_path last starts a stage, resumes it after a kill, or skips it when complete.
demo: $(STAMP)
	$(PY) -m amlight fit --config configs/quickstart/stage1.yaml --ckpt_path last
	$(PY) -m amlight fit --config configs/quickstart/stage2.yaml --ckpt_path last
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

# The docs site (docs/*.md, API pages from the docstrings) into site/; --strict fails on a broken link,
# anchor or reference. NO_MKDOCS_2_WARNING silences mkdocs-material's banner about its successor.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# Heavy checks (end-to-end training runs); CI runs them in a bounded form.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# SD 1.5 at 512 px on the CPU: the shipped configs/sd15/cityscapes stage 1 + stage 2, generate, evaluate,
# on SD 1.5's exact architecture with random weights (runs/sd15-standin, 3.9 GiB) and synthetic scenes in
# Cityscapes' layout (runs/sd15-fixture). Wall time and peak memory per phase: runs/rehearse-sd15/rehearsal.md
rehearse-sd15: $(STAMP)
	$(PY) -m amlight rehearse sd15 --eval-modes adapter

# On a CUDA machine: SD-1.5-sized speed and memory figures in one table (under 8 minutes).
gpu-check: $(STAMP)
	$(PY) -m amlight benchmark gpu

clean-runs:
	rm -rf runs

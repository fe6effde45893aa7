# galgen: `make help` lists the targets. The two set-up commands of the README are
# `make demo` and `make test`; both install what they need into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.galgen-installed
TORCH_VERSION ?= 2.13.0
FAMILY ?= diffusion
PROFILE ?= auto
SWEEP_OUT ?= runs/sweep
CHROMIUM ?= /usr/bin/chromium
export WANDB_SILENT := true

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv with the pinned CPU torch, then galgen and its dev extras
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip > $(VENV)/pip.log 2>&1 || { grep -v '^WARNING: Location' $(VENV)/pip.log; exit 1; }
	@$(PY) -c "import torch" 2>/dev/null || { echo "installing torch==$(TORCH_VERSION) (CPU wheel)"; \
	  $(PY) -m pip install -q torch==$(TORCH_VERSION) > $(VENV)/pip.log 2>&1 || { grep -v '^WARNING: Location' $(VENV)/pip.log; exit 1; }; }
	@echo "installing galgen and its dependencies into $(VENV)"
	@$(PY) -m pip install -q -e ".[dev]" > $(VENV)/pip.log 2>&1 || { grep -v '^WARNING: Location' $(VENV)/pip.log; exit 1; }
	@$(PY) -c "import galgen_lightning, torch, lightning, galsim; print('galgen installed: torch', torch.__version__, '| lightning', lightning.__version__)"
	@touch $(STAMP)

demo: install ## Train diffusion pairs at a small and a larger N on synthetic galaxies (CPU, < 10 min) and print the verdict
	$(PY) -m galgen_lightning.demo

test: install browser lint ## Lint, then the default test suite (all but the slow tier; ~6 min on 2 cores), W&B disabled
	WANDB_MODE=disabled $(PY) -m pytest -q -m "not slow" --durations=10

test-slow: install slurm ## The slow tier, which CI runs after `make test`: real training, DDP, a SLURM cluster, the wheel (~12 min)
	WANDB_MODE=disabled $(PY) -m pytest -q -m slow --durations=10

test-fast: install ## The fast tier to run before every commit: no slow tests, no whole-command tests (< 2 min)
	WANDB_MODE=disabled $(PY) -m pytest -q -m "not slow and not cli"

bench: install ## CPU benchmarks at a small size (JSON); on a GPU machine: make bench DEVICE=cuda SIZE=full
	$(PY) benchmarks/bench_diffusion.py --device $(or $(DEVICE),cpu) --size $(or $(SIZE),small)

sweep: install ## Train pairs over N, then the report: FAMILY=diffusion|glow|gan PROFILE=auto|small|paper [NS=1,10,100 SEEDS=0,1,2 PER_GPU=1 FIT_ARGS=...]
	$(VENV)/bin/galgen sweep --family $(FAMILY) --profile $(PROFILE) --out $(SWEEP_OUT) $(if $(NS),--ns '$(NS)') $(if $(SEEDS),--seeds '$(SEEDS)') $(if $(PER_GPU),--per_gpu true) $(if $(FIT_ARGS),--fit_args='$(FIT_ARGS)')

report: install ## HTML report of a run or a sweep: make report [RUN=runs/sweep] -> <RUN>/report/index.html
	$(VENV)/bin/galgen report $(or $(RUN),$(SWEEP_OUT))

browser: ## Install Debian's chromium (the report's headless-browser test) when it is missing
	@test -x $(CHROMIUM) || command -v chromium > /dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo > /dev/null 2>&1; then SUDO="sudo -n"; else SUDO=none; fi; \
	  echo "installing chromium with apt-get (for the report's headless-browser test)"; \
	  if [ "$$SUDO" != none ] && { $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	       $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } > /tmp/galgen-apt.log 2>&1; then \
	    echo "chromium installed: $$(command -v chromium)"; \
	  else echo "WARNING: could not install chromium (needs apt-get as root or passwordless sudo; log in /tmp/galgen-apt.log): the browser test will be skipped"; fi; }

slurm: ## Install Debian's slurm-wlm and munge (the SLURM launcher's tests start a one-node cluster) when missing
	@{ test -x /usr/sbin/slurmctld || command -v slurmctld > /dev/null 2>&1; } && { test -x /usr/sbin/munged || command -v munged > /dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo > /dev/null 2>&1; then SUDO="sudo -n"; else SUDO=none; fi; \
	  echo "installing slurm-wlm and munge with apt-get (for the SLURM launcher's tests)"; \
	  if [ "$$SUDO" != none ] && { $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	       $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } > /tmp/galgen-apt-slurm.log 2>&1; then \
	    echo "slurm installed: $$(/usr/sbin/slurmctld -V)"; \
	  else echo "WARNING: could not install slurm-wlm and munge (needs apt-get as root or passwordless sudo; log in /tmp/galgen-apt-slurm.log): the SLURM tests will be skipped"; fi; }

lint: install ## ruff: the lint rules (pyproject.toml) and the formatting (ruff format --check; `make format` fixes it)
	$(VENV)/bin/ruff check galgen_lightning tests benchmarks
	$(VENV)/bin/ruff format --check galgen_lightning tests benchmarks

format: install ## Format the code with ruff format
	$(VENV)/bin/ruff format galgen_lightning tests benchmarks

clean: ## Remove run outputs and caches (not .venv, not the data cache)
	rm -rf runs wandb lightning_logs .pytest_cache .ruff_cache

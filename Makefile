# Two commands for a fresh machine (Python 3.11; no GPU needed):
#   make repro   set up .venv, install everything, fetch/regenerate the pinned raw data, run `dvc repro`
#   make test    set up .venv the same way and run the whole test suite
# On a CPU-only machine pip takes the machine's torch 2.13.0+cpu wheel; on a CUDA machine the same pin
# resolves to PyPI's CUDA build (README, "Install").
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export MUJOCO_GL ?= egl
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install repro test lint clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip check
	@# Every interpreter in the venv applies vpdd's torchvision work-around before anything imports
	@# torchvision (transformers and open_clip do); see vpdd/_compat.py and environment.md §7.
	echo "import vpdd._compat as c; c.patch_torchvision_for_cpu_torch()" \
	  > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/vpdd_torchvision_cpu.pth"
	touch $(STAMP)

repro: $(STAMP)
	$(BIN)/vpdd data fetch
	$(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check vpdd kernels flows tests

clean-venv:
	rm -rf $(VENV)

# Set-up and the two everyday commands. `make demo` runs MARS on the embedded
# demo; `make test` runs the test suite. Both create .venv on first use.
#
# TORCH pins the CPU build of PyTorch that CPU-only machines should use; an
# unpinned `torch` pulls a multi-GB CUDA build. On a GPU machine, pass the
# build you want, e.g. `make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
EXTRAS ?= test,team
BIN := $(VENV)/bin

# The processors of Qwen2-VL, Qwen2.5-VL, Qwen3-VL, SmolVLM, InternVL,
# LLaVA-OneVision and Mistral 3 need torchvision, and no torchvision release
# imports beside the CPU build of torch 2.13.0. Their tests run in a second
# environment with a torch and torchvision pair that work together: on
# x86_64 a CUDA build (about 5.5 GB, runs on the CPU), on aarch64 a CPU build.
VISION_VENV ?= .venv-vision
ifeq ($(shell uname -m),aarch64)
VISION_TORCH ?= torch==2.9.1 torchvision==0.24.1
else
VISION_TORCH ?= torch==2.14.1 torchvision==0.29.1
endif

.PHONY: demo test test-torchvision install postgres clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $@

demo: install
	$(BIN)/mars run

test: install postgres
	$(BIN)/python -m pytest
	$(MAKE) test-torchvision

# Only the tests marked `torchvision`: every model family whose processor needs it.
test-torchvision:
	$(MAKE) install VENV=$(VISION_VENV) TORCH="$(VISION_TORCH)" EXTRAS=test
	$(VISION_VENV)/bin/python -m pytest -m torchvision

# The team-mode test starts a real PostgreSQL server. As root with apt-get,
# install it where missing; elsewhere that test is skipped with its reason.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo "PostgreSQL is not installed: the team-mode test will be skipped"; fi

clean:
	rm -rf $(VENV) $(VISION_VENV) mars-work

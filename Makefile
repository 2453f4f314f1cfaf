# Set-up and the two everyday commands. `make demo` runs MARS on the embedded
# demo; `make test` runs the test suite. Both create .venv on first use.
#
# TORCH pins the CPU build of PyTorch that CPU-only machines should use; an
# unpinned `torch` pulls a multi-GB CUDA build. On a GPU machine, pass the
# build you want, e.g. `make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test install postgres clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test,team]"
	touch $@

demo: install
	$(BIN)/mars run

test: install postgres
	$(BIN)/python -m pytest

# The team-mode test starts a real PostgreSQL server. As root with apt-get,
# install it where missing; elsewhere that test is skipped with its reason.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo "PostgreSQL is not installed: the team-mode test will be skipped"; fi

clean:
	rm -rf $(VENV) mars-work

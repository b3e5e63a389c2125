# The two set-up commands of the README. Both create (or reuse) .venv with pneumoscan installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install clean

demo: $(STAMP)
	$(BIN)/pneumoscan demo

test: $(STAMP)
	$(BIN)/python -m pytest

install: $(STAMP)

# constraints.txt pins the CPU build of torch; without it pip may pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs

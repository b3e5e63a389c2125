# The two set-up commands of the README (make demo, make test). Both create (or reuse) .venv with pneumoscan installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-tflite install model mutation docs clean

demo: $(STAMP)
	$(BIN)/pneumoscan demo

test: $(STAMP)
	$(BIN)/python -m pytest

install: $(STAMP)

# TFLite export needs the optional extra pneumoscan[tflite] (litert-torch, ~1.2 GB, its own pins): its own
# environment, where the export tests run again with the TFLite cases included (CI runs this after make test).
test-tflite:
	$(PYTHON) -m venv .venv-tflite
	.venv-tflite/bin/python -m pip install --quiet --upgrade pip
	.venv-tflite/bin/python -m pip install --quiet -c constraints.txt -e '.[test,tflite]'
	.venv-tflite/bin/python -m pytest -q tests/test_export.py

# The documentation site (docs/, mkdocs.yml): MkDocs with the Material theme, the API pages generated from the
# docstrings by mkdocstrings. Its own environment (the docs extra, pinned in constraints.txt); --strict fails the
# build on a broken link or anchor, a missing page or a docstring mkdocstrings cannot render. Output: site/.
DOCS_STAMP := .venv-docs/.installed-stamp
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 .venv-docs/bin/mkdocs build --strict --site-dir site

$(DOCS_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv .venv-docs
	.venv-docs/bin/python -m pip install --quiet --upgrade pip
	.venv-docs/bin/python -m pip install --quiet -c constraints.txt -e '.[docs]'
	touch $(DOCS_STAMP)

# The model shipped as `--model default` (issue 19): an ensemble of two compact members, each trained from a
# recipe in configs/ (default-model.toml and default-member-seed1.toml: the framing augmentation and padding
# trimmed; trained on the train split, validated on the same patient-grouped carve of it), averaged by
# `pneumoscan ensemble`, then copied into the package. Its log: studies/framing/make-model.log.
MEMBERS := default-model default-member-seed1
model: $(STAMP)
	for member in $(MEMBERS); do \
	  $(BIN)/pneumoscan train --config configs/$$member.toml --out runs/$$member || exit 1; done
	$(BIN)/pneumoscan ensemble $(addprefix runs/,$(MEMBERS)) --out runs/default-ensemble
	mkdir -p src/pneumoscan/weights/default
	cp runs/default-ensemble/model.json runs/default-ensemble/model.safetensors runs/default-ensemble/model.onnx \
	  src/pneumoscan/weights/default/

# Mutation check of the metrics, threshold, split and bundle modules (mutmut; see docs/contributing.md, "Tests").
# mutmut forks a child per mutant; one OpenMP thread keeps a forked torch from deadlocking.
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[mutation]'
	rm -rf mutants
	OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children 2 || true
	$(BIN)/mutmut results

# constraints.txt pins the CPU build of torch; without it pip may pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .venv-tflite .venv-docs site runs mutants

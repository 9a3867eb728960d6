# Set-up is two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned so pip takes the CPU wheel; the project's own range admits it and nothing newer.
TORCH := torch==2.13.0

.PHONY: demo test test-fast fuzz bench install clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[all,dev]" $(TORCH)
	touch $@

install: $(VENV)/.installed

# The main job: Deep Compression of LeNet-300-100 on digits (one thread: the model is too small to share).
demo: $(VENV)/.installed
	$(PY) -m torchslim run recipes/digits/deep_compression.yaml --out runs/demo --threads 1 --overwrite

# Two workers (this project's machines have two cores); a test file's tests stay on one worker, so a module's
# trained fixture is built once.
test: $(VENV)/.installed
	$(PY) -m pytest -n 2 --dist loadfile

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow"

# Bad input never ends in a traceback: 5,000 generated malformed recipes, domains and data files through the CLI.
fuzz: $(VENV)/.installed
	$(PY) tests/fuzz/fuzz_cli.py --cases 5000

bench: $(VENV)/.installed
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf runs .pytest_cache

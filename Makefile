# The two front-door commands (README): `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test install lint typecheck clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit("Settle needs Python >= 3.11 (found %s)" % sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	@# Optional: HarfBuzz's subsetter makes PDF rendering ~3x faster (root + apt only; never fatal).
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && ! dpkg -s libharfbuzz-subset0 >/dev/null 2>&1; then \
	  (apt-get install -y -qq libharfbuzz-subset0 >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libharfbuzz-subset0 >/dev/null 2>&1)) || \
	  echo "note: libharfbuzz-subset0 not installed; PDFs render slower"; fi
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/settle demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check libs schemas domain services tools tests
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy libs schemas domain services tools

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

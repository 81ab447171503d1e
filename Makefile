# Two commands: `make run` (the main job) and `make test` (the whole suite). Each creates .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

.PHONY: install run test bench lint
install: $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/taskrank serve

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/embeddings.py

lint: $(STAMP)
	$(BIN)/ruff check app worker embeddings library tests bench
	$(BIN)/mypy embeddings library

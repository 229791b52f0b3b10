# labkit: `make train` and `make test` install what is needed first (once per pyproject change).
PYTHON ?= python
STAMP := .venv-installed

.PHONY: install train test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install -q -e '.[dev,sweep,slurm,search]'
	@touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PYTHON) train.py $(ARGS)

test: $(STAMP)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q

lint: $(STAMP)
	$(PYTHON) -m ruff check .

bench: $(STAMP)
	$(PYTHON) benchmarks/throughput_mlp.py

clean:
	rm -rf logs outputs multirun .pytest_cache .ruff_cache $(STAMP)

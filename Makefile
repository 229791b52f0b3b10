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

# two pytest workers, one thread each: the suite's time is mostly subprocess start-ups (one core
# each), so two workers use both cores; a test file stays on one worker (module fixtures, torchrun)
test: $(STAMP)
	$(PYTHON) -m ruff check .
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(PYTHON) -m ruff check .

bench: $(STAMP)
	$(PYTHON) benchmarks/throughput_mlp.py

clean:
	rm -rf logs outputs multirun .pytest_cache .ruff_cache $(STAMP)

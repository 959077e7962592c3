# The README's two commands: `make demo` (set-up + main job) and `make test` (set-up + tests).
PY := .venv/bin/python

.PHONY: setup demo test
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m ratkit train

test: setup
	$(PY) -m pytest tests

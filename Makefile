# The README's two commands. Each does its own set-up from scratch (scripts/setup.sh is idempotent).
.PHONY: setup quickstart test ui

setup:
	scripts/setup.sh

# Installs, then materializes the whole graph on the embedded defaults (teacher, judge, student: SmolLM2-135M).
quickstart:
	scripts/setup.sh
	.venv/bin/distill quickstart

# Installs (incl. Debian chromium for the UI test), then runs the whole test suite, as CI does: the real-model
# tests (the 135M student trained and merged, GGUF generation in llama.cpp) included.
test:
	scripts/setup.sh browser
	.venv/bin/lint-imports
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q

# The Dagster UI on the same instance the quickstart and the CLI write to ($DISTILL_HOME/dagster_home).
ui:
	scripts/setup.sh
	.venv/bin/distill ui

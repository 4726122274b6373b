# Two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The embedded Prefect server needs ~20 s to create its SQLite database on first use;
# Prefect's default startup timeout is exactly 20 s, so give it room. No telemetry offline.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export NO_MKDOCS_2_WARNING ?= 1
# Servers started here (make ui, the demo's and the tests' embedded ones) record task runs'
# state events 200 at a time, not one by one: half the server CPU an image of a batch
# (bench/RESULTS-overhead.md; gptimg_flows/cli/app.py sets the same for the CLI).
export PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE ?= 200
export PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE ?= 200
export PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL ?= 1

# The demo and the UI use a Prefect home of this checkout's own (./.prefect, ignored by git),
# so a ~/.prefect made by another Prefect version is never touched, and the UI shows the runs
# the demo made. Set PREFECT_HOME (or PREFECT_API_URL, for a server of your own) to choose.
ifeq ($(origin PREFECT_HOME)$(origin PREFECT_API_URL),undefinedundefined)
LOCAL_PREFECT := PREFECT_HOME=$(CURDIR)/.prefect
endif
UI_PORT ?= 4200

.PHONY: install demo ui docs test lint typecheck pytest pytest-fast pytest-slow clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,aws,ocr,docs]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(LOCAL_PREFECT) $(BIN)/gptimg demo

# The Prefect UI and API on http://127.0.0.1:$(UI_PORT), on the demo's database.
ui: $(STAMP)
	$(LOCAL_PREFECT) PREFECT_UI_API_URL=http://127.0.0.1:$(UI_PORT)/api \
		$(BIN)/prefect server start --host 127.0.0.1 --port $(UI_PORT)

SOURCES := $(wildcard gptimg_flows tests blocks deployments bench)

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

typecheck: $(STAMP)
	$(BIN)/mypy

# Two suites, both run by `make test`: the slow one (marker `slow`: the chaos batch, kill -9
# crash-resume, a real `prefect server` with deployments and two workers) runs second.
pytest: pytest-fast pytest-slow

# The fast suite in two processes (each with its own Prefect server): about half the time.
pytest-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra --durations=15 -m "not slow" -n 2

pytest-slow: $(STAMP)
	$(BIN)/python -m pytest -q -ra --durations=15 -m slow

# The docs site into ./site (mkdocs, strict: a broken link or reference fails it).
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet

test: lint typecheck docs pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site

bench: $(STAMP)
	$(BIN)/python bench/run.py

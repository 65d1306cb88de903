# Exactly-once bean deduction pipeline -- developer entry points.
# Run `make` (or `make help`) to list the targets.

PYTHON ?= python3
VENV ?= .venv
PY = $(VENV)/bin/python

TEST_ARGS ?=
BENCH_ARGS ?=
# make soak: minutes, share of the measured peak, and any other bench/soak.py argument.
SOAK_MINUTES ?= 60
SOAK_SHARE ?= 0.70
SOAK_ARGS ?=

# Installs come from the hashed locks (requirements.txt: the runtime; requirements-dev.txt: it plus
# the tools, tests, demo client and bench), which `make lock` compiles from the hand-written *.in
# files with uv. The venv is rebuilt when a lock changes.
LOCKS := requirements.txt requirements-dev.txt
STAMP := $(VENV)/.installed
# How both locks are compiled: one Python (the oldest we support), universal markers, every hash.
# UV_CUSTOM_COMPILE_COMMAND makes the lock's header name `make lock`, whatever the output path.
UV_COMPILE = UV_CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/uv pip compile --quiet --generate-hashes \
	--python-version 3.11 --universal

.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

.PHONY: help venv lock check-locks services browser migrate web demo test test-fast library-test schema check audit cluster-test pgcluster-test bench soak chaos lint typecheck worker beat clean distclean

help: ## Show this list of targets
	@awk 'BEGIN { FS = ":.*## " } \
	     /^[A-Za-z0-9_.-]+:.*## / { printf "  %-12s %s\n", $$1, $$2 }' \
	     $(MAKEFILE_LIST)

venv: $(STAMP) ## Create $(VENV) and install the locked requirements, hashes checked (re-runs only when a lock changes)
	@:

$(PY):
	scripts/ensure-python $(PYTHON)
	$(PYTHON) -m venv $(VENV)

# requirements-dev.txt holds every runtime pin too (compiled with -c requirements.txt). Hash-checking
# mode refuses any package, transitive ones included, that the lock does not pin with a hash.
$(STAMP): $(LOCKS) | $(PY)
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.txt
	@touch $@

lock: venv ## Recompile the hashed locks from requirements*.in (newest releases the ranges allow; commit both)
	$(UV_COMPILE) --upgrade requirements.in -o requirements.txt
	$(UV_COMPILE) --upgrade requirements-dev.in -o requirements-dev.txt

# Compile each lock again into a copy of itself (uv keeps the copy's pins where the inputs still allow
# them) and compare: an input added, removed or narrowed, or a lock edited by hand, shows as a diff.
check-locks: venv ## Fail when a lock no longer matches its requirements*.in inputs (make check runs it)
	@set -e; work="$$(mktemp -d)"; trap 'rm -rf "$$work"' EXIT; \
	for lock in $(LOCKS); do \
	    cp "$$lock" "$$work/$$lock"; \
	    $(UV_COMPILE) "$${lock%.txt}.in" -o "$$work/$$lock"; \
	    diff -u "$$lock" "$$work/$$lock" >&2 \
	        || { echo "$$lock no longer matches $${lock%.txt}.in: run make lock and commit both" >&2; exit 1; }; \
	done; \
	echo "the locks match their inputs"

services: ## Make sure PostgreSQL, RabbitMQ and Redis are running (installs them if missing and root)
	scripts/ensure-services

migrate: venv services ## Apply the database migrations
	$(PY) manage.py migrate --noinput

web: venv services ## Serve the project with gunicorn on 127.0.0.1:$${PORT:-8000} (WEB_CONCURRENCY workers; project/gunicorn.conf.py)
	$(PY) manage.py collectstatic --noinput -v0
	$(VENV)/bin/gunicorn -c project/gunicorn.conf.py

demo: venv services ## Run the end-to-end demo (worker + beat + trades + verify)
	VENV=$(VENV) scripts/demo

# The end-to-end tests again with the bean service in a database of its own.
TWO_DATABASE_TESTS := \
	tests.e2e.test_pipeline_integration.PipelineIntegrationTests.test_500_trades_over_20_accounts_are_each_deducted_exactly_once \
	tests.e2e.test_reconcile_integration.ReconcilerIntegrationTests.test_a_message_removed_from_the_queue_is_detected_and_republished

browser: ## Make sure headless Chromium + ChromeDriver are there for the browser tests (never fails)
	scripts/ensure-browser

# The bean service's database for that pass: on the server of DATABASE_URL (or the default's),
# named beans_side.
# And with the deductions spread over four queue partitions.
PARTITIONED_TESTS := \
	tests.e2e.test_pipeline_integration.PipelineIntegrationTests.test_500_trades_over_20_accounts_are_each_deducted_exactly_once \
	tests.e2e.test_ordering_integration

test: venv services browser ## Run the test suite, then end-to-end tests with two databases and with 4 queue partitions (TEST_ARGS=... for one run)
ifeq ($(strip $(TEST_ARGS)),)
	$(MAKE) --no-print-directory audit
	PYTHONUNBUFFERED=1 $(PY) manage.py test --noinput
	PYTHONUNBUFFERED=1 BEANS_DATABASE_URL="$$($(PY) -m project.environment database-url beans_side)" \
		$(PY) manage.py test --noinput $(TWO_DATABASE_TESTS)
	PYTHONUNBUFFERED=1 TRADES_QUEUE_PARTITIONS=4 $(PY) manage.py test --noinput $(PARTITIONED_TESTS)
	$(MAKE) --no-print-directory library-test
else
	PYTHONUNBUFFERED=1 $(PY) manage.py test --noinput $(TEST_ARGS)
endif

# The inner loop, the unit tier: no test that needs RabbitMQ (tag broker: with it left out, the
# runner makes no vhost and points the broker at a closed port, so an untagged one fails at once)
# and none of the integration tiers. PostgreSQL and Redis only; RabbitMQ is neither started nor read.
FAST_EXCLUDED_TAGS := broker integration cluster pgcluster chaos soak browser broker_restart partition
# Its property tests run a fifth of their examples (tests/strategies.py); make test runs them all.
FAST_PROPERTY_EXAMPLES_SHARE ?= 0.2

test-fast: venv ## The unit tier: no RabbitMQ, no integration tier; PostgreSQL and Redis only (under 2 minutes)
	scripts/ensure-services postgresql redis
	PYTHONUNBUFFERED=1 TEST_PROPERTY_EXAMPLES_SHARE=$(FAST_PROPERTY_EXAMPLES_SHARE) \
		$(PY) manage.py test --noinput $(addprefix --exclude-tag ,$(FAST_EXCLUDED_TAGS)) $(TEST_ARGS)

# The library as another project gets it: a wheel built from a copy of the sources (setuptools
# writes build/ and *.egg-info/ next to them), installed into a venv made afresh on the runtime
# lock (so the versions are the locked ones, not the day's; it holds what examples/orders needs),
# `pip check` proving that the wheel's own ranges admit them, and the example's
# exactly-once tests run with that venv's Python from examples/orders, so that only the installed
# wheel provides `reliability`.
LIBRARY_VENV := .run/library-venv

library-test: venv services ## Build the wheel, install it in a fresh venv with examples/orders, run the example's exactly-once tests (1-2 min)
	rm -rf $(LIBRARY_VENV)
	@set -e; work="$$(mktemp -d)"; trap 'rm -rf "$$work"' EXIT; \
	mkdir "$$work/source"; \
	tar -C . --exclude=./.git --exclude=./.venv --exclude=./.run --exclude='./.*cache' --exclude=./.hypothesis \
	    --exclude=./build --exclude=./dist --exclude='*.egg-info' --exclude=__pycache__ -cf - . \
	    | tar -C "$$work/source" -xf -; \
	echo "building the wheel"; \
	$(PY) -m pip wheel --no-deps --no-build-isolation -q -w "$$work/dist" "$$work/source"; \
	$(PY) -m venv $(LIBRARY_VENV); \
	echo "installing requirements.txt (hashes checked), then $$(basename "$$work"/dist/*.whl) into $(LIBRARY_VENV)"; \
	$(LIBRARY_VENV)/bin/python -m pip install -q --require-hashes -r requirements.txt; \
	$(LIBRARY_VENV)/bin/python -m pip install -q --no-deps "$$work"/dist/*.whl; \
	$(LIBRARY_VENV)/bin/python -m pip check
	cd examples/orders && env -u PYTHONPATH PYTHONUNBUFFERED=1 $(abspath $(LIBRARY_VENV))/bin/python \
	    manage.py test --noinput --settings=orders_project.test_settings

# The OpenAPI document of the HTTP API, as committed; make check fails when the code says otherwise.
OPENAPI_SCHEMA := project/api/openapi.json
OPENAPI_EXPORT = $(PY) manage.py export_openapi_schema --api project.api.routes.api --indent 2 --sorted

schema: venv ## Write the API's OpenAPI document to project/api/openapi.json (commit it)
	$(OPENAPI_EXPORT) > $(OPENAPI_SCHEMA)

check: venv check-locks ## What CI checks before the tests: the locks, lint, format, types, import contracts, missing migrations, the committed API schema
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports
	$(PY) manage.py makemigrations --check --dry-run --noinput
	@$(OPENAPI_EXPORT) | diff -u $(OPENAPI_SCHEMA) - \
	    || { echo "$(OPENAPI_SCHEMA) differs from the API's code: run make schema and commit it" >&2; exit 1; }

audit: venv ## Check the pinned requirements for known vulnerabilities (says so, and passes, when the vulnerability service is unreachable)
	$(PY) scripts/audit-requirements.py

pgcluster-test: venv services ## Kill -9 the PostgreSQL primary of a local Patroni cluster under 5,000 deductions, and the async negative control
	PYTHONUNBUFFERED=1 $(PY) manage.py test --noinput --tag pgcluster tests.e2e.test_pgcluster_integration

cluster-test: venv services ## Kill -9 the quorum leader of a local 3-node cluster under 5,000 deductions (3-6 min)
	PYTHONUNBUFFERED=1 $(PY) manage.py test --noinput --tag cluster tests.e2e.test_cluster_integration

bench: venv services ## Run the benchmark (extra arguments: BENCH_ARGS=...)
	$(PY) -m bench.run $(BENCH_ARGS)

soak: venv services ## The pipeline through the web tier at SOAK_SHARE (0.70) of its peak for SOAK_MINUTES (60), retention windows of 5 min; steady state and I1-I10 (SOAK_ARGS=...)
	PYTHONUNBUFFERED=1 $(PY) -m bench.soak --minutes $(SOAK_MINUTES) --share $(SOAK_SHARE) $(SOAK_ARGS)

chaos: venv services ## Seeded faults under load, then check I1-I10 (N=10000: CI tier, the default; N=100000: full; SEED=... replays; CHAOS_ARGS=--pg-cluster: on a Patroni cluster)
	PYTHONUNBUFFERED=1 $(PY) -m chaos.run $(if $(N),--deductions $(N)) $(if $(SEED),--seed $(SEED)) $(CHAOS_ARGS)

lint: venv ## Run ruff (lint + format check)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

typecheck: venv ## Run mypy
	$(VENV)/bin/mypy .

worker: venv services ## Run a Celery worker in the foreground
	$(VENV)/bin/celery -A project worker -l info

beat: venv services ## Run Celery beat in the foreground
	$(VENV)/bin/celery -A project beat -l info

clean: ## Remove .run/ and Python caches (keeps the venv)
	rm -rf .run .mypy_cache .ruff_cache .pytest_cache
	find . \( -path './$(patsubst ./%,%,$(VENV))' -o -path ./.git \) -prune -o \
	     -type d -name __pycache__ -prune -exec rm -rf {} + -o \
	     -type f -name '*.py[co]' -exec rm -f {} +

distclean: clean ## Like clean, and also remove the venv
	rm -rf $(VENV)

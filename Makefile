# ward: the two commands a new user runs are `make demo` and `make test`.
# Both install everything they need first (scripts/setup.sh, idempotent).
SHELL := /bin/bash
GO ?= go
export PATH := $(CURDIR)/build/bin:$(PATH)

.PHONY: setup build build-cgocheck2 test demo bench lint clean generate generate-check

setup:
	bash scripts/setup.sh

# libward.so (every ward filter, loaded by Envoy), wardd and ward; and the
# test module build/test/libward.so (-tags wardtest: also the ward.test.*
# filters the Envoy test suites use; the production module has none).
build:
	mkdir -p build/bin build/test
	CGO_ENABLED=1 $(GO) build -buildmode=c-shared -o build/libward.so ./proxylib/module
	CGO_ENABLED=1 $(GO) build -tags wardtest -buildmode=c-shared -o build/test/libward.so ./proxylib/module
	$(GO) build -o build/bin/wardd ./cmd/wardd
	$(GO) build -o build/bin/ward ./cmd/ward

# The test module with the strictest cgo pointer checks (cgocheck2).
build-cgocheck2:
	mkdir -p build/cgocheck2
	GOEXPERIMENT=cgocheck2 CGO_ENABLED=1 $(GO) build -tags wardtest -buildmode=c-shared -o build/cgocheck2/libward.so ./proxylib/module

lint:
	bash scripts/lint.sh

# The whole suite, root/netns/Envoy/Kafka tests included (CI runs as root).
test: setup generate-check build build-cgocheck2 lint
	CI=$${CI:-} $(GO) test -p 2 -timeout 28m ./...
	# The Envoy end-to-end suites again, against the cgocheck2 module.
	CI=$${CI:-} WARD_MODULE_DIR=$(CURDIR)/build/cgocheck2 $(GO) test -count=1 -p 2 -timeout 10m ./conformance/foundation ./conformance/envoyhttp

demo: setup build
	$(GO) run ./conformance/demo

bench: setup build
	bash bench/run.sh

# Regenerate every committed generated file (protobuf stubs, BPF objects and
# their bindings) with the pinned generators.
generate:
	bash scripts/generate.sh

# What CI checks: regenerating changes nothing (scripts/generate.sh --check).
generate-check:
	bash scripts/generate.sh --check

clean:
	rm -rf build

# ward: the two commands a new user runs are `make demo` and `make test`.
# Both install everything they need first (scripts/setup.sh, idempotent).
SHELL := /bin/bash
GO ?= go
export PATH := $(CURDIR)/build/bin:$(PATH)

.PHONY: setup build build-cgocheck2 image test demo bench lint clean generate generate-check

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

# wardd's container image as an OCI archive, build/ward-image.tar, without a
# container daemon (tools/image, go-containerregistry): on an empty base,
# /usr/bin/wardd, /usr/bin/ward, /usr/bin/ward-install (static Go binaries),
# /usr/lib/ward/libward.so, and iproute2's ip with the shared libraries it
# loads (the build machine's, Debian 12): wardd and `ward bpf cleanup` run
# `ip rule` / `ip route` for the proxy routing. docs/kubernetes.md says how
# to load it.
IMAGE ?= ghcr.io/wardproxy/ward:0.1.0
IP_FILES = /usr/sbin/ip $(shell ldd /usr/sbin/ip | awk '/=> \//{print $$3} /^\t\/lib64/{print $$1}')
image: build
	mkdir -p build/image
	CGO_ENABLED=0 $(GO) build -trimpath -o build/image/wardd ./cmd/wardd
	CGO_ENABLED=0 $(GO) build -trimpath -o build/image/ward ./cmd/ward
	CGO_ENABLED=0 $(GO) build -trimpath -o build/image/ward-install ./cmd/ward-install
	$(GO) -C tools/image run . -out $(CURDIR)/build/ward-image.tar -ref $(IMAGE) \
		/usr/bin/wardd=$(CURDIR)/build/image/wardd /usr/bin/ward=$(CURDIR)/build/image/ward \
		/usr/bin/ward-install=$(CURDIR)/build/image/ward-install /usr/lib/ward/libward.so=$(CURDIR)/build/libward.so \
		$(foreach f,$(IP_FILES),$(f)=$(f))

lint:
	bash scripts/lint.sh

# The whole suite, root/netns/Envoy/Kafka tests included (CI runs as root).
test: setup generate-check build build-cgocheck2 image lint
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

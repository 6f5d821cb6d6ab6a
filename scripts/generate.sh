#!/usr/bin/env bash
# generate.sh regenerates every committed generated file (go generate ./...:
# the npds and Cloud City protobuf stubs, the BPF objects and their Go
# bindings, the cilium.io/v2 policy CRDs that internal/crdgen generates from
# ward's policy types into deploy/helm/ward/crds; deploy/render.sh: the
# chart's rendered manifests). With --check (what `make test`, hence CI, runs) it fails when
# regenerating changed the work tree: generated code must be committed
# fresh, never hand-edited.
#
# The outputs are byte-reproducible given the generators' versions: bpf2go
# (a go.mod tool) already compiles with -fno-ident, -fdebug-prefix-map and
# -fdebug-compilation-dir=., so neither the checkout's path nor the clang
# binary's ident string reach the objects (a copy of the tree in another
# directory regenerates identical .o files). What does change them is the
# compiler and header versions, so those are pinned to Debian 12's packages:
# clang/llvm 14 and libbpf-dev 1.1 (scripts/setup.d/50-bpf.sh), protoc 3.21.12
# (protobuf-compiler, scripts/setup.d/20-http.sh; its version is written into
# every .pb.go).
set -euo pipefail
cd "$(dirname "$0")/.."

CLANG_MAJOR=14
PROTOC_VERSION=3.21.12

check=0
[[ "${1:-}" == --check ]] && check=1

clang_version="$(clang --version)"
if [[ $clang_version != *"clang version ${CLANG_MAJOR}."* ]]; then
	echo "generate: the committed BPF objects are built by Debian 12's clang ${CLANG_MAJOR}; found: ${clang_version%%$'\n'*} (run make setup on Debian 12)" >&2
	exit 1
fi
protoc_version="$(protoc --version)"
if [[ $protoc_version != "libprotoc ${PROTOC_VERSION}" ]]; then
	echo "generate: the committed stubs are built by protoc ${PROTOC_VERSION} (Debian 12's protobuf-compiler); found: $protoc_version" >&2
	exit 1
fi

# state fingerprints the work tree as git sees it: changed and untracked
# files and their contents.
state() {
	{
		git status --porcelain=v1 --untracked-files=all
		git diff --binary
		local f
		while IFS= read -r -d '' f; do
			if [[ -f $f && ! -L $f ]]; then sha256sum "$f"; fi
		done < <(git ls-files --others --exclude-standard -z)
	} | sha256sum
}

before="$(state)"
go generate ./...
# The Helm chart's rendered plain manifests (deploy/manifests) with the real
# helm (build/bin/helm, make setup).
bash deploy/render.sh
if ((check)); then
	after="$(state)"
	if [[ "$before" != "$after" ]]; then
		echo "generate: regenerating changed the tree: commit the generated files with their sources" >&2
		git status --short >&2
		exit 1
	fi
fi

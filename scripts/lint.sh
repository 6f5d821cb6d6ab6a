#!/usr/bin/env bash
# lint.sh: gofmt, go vet, staticcheck, and the cgo boundary rule (only
# proxylib/abi may import "C").
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
unformatted="$(gofmt -l $(git ls-files '*.go'))"
if [[ -n "$unformatted" ]]; then
	echo "lint: gofmt needed:"; echo "$unformatted"; fail=1
fi
go vet ./... || fail=1
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./... || fail=1
cgo="$(go list -f '{{if .CgoFiles}}{{.ImportPath}}{{end}}' ./... | grep -v '^github.com/wardproxy/ward/proxylib/abi$' || true)"
if [[ -n "$cgo" ]]; then
	echo "lint: packages other than proxylib/abi use cgo:"; echo "$cgo"; fail=1
fi
exit $fail

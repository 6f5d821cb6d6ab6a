// Command module is libward.so: every ward filter in one shared library
// (one Go runtime per process), built with
//
//	go build -buildmode=c-shared -o build/libward.so ./proxylib/module
//
// and loaded by Envoy's envoy.filters.{http,network}.dynamic_modules with
// do_not_close: true. It only wires the filters into proxylib's registry;
// the ABI hooks live in proxylib/abi.
//
// Built with -tags wardtest (build/test/libward.so, what the Envoy test
// suites load) it also registers proxylib/testfilters (ward.test.*). The
// production build links none of them: scripts/lint.sh checks it with
// go list -deps, with the other process boundaries.
package main

import (
	_ "github.com/wardproxy/ward/proxylib/abi" // the exported ABI hooks
)

func init() {
	registerWard()
}

func main() {}

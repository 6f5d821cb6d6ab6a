// Command module is libward.so: every ward filter in one shared library
// (one Go runtime per process), built with
//
//	go build -buildmode=c-shared -o build/libward.so ./proxylib/module
//
// and loaded by Envoy's envoy.filters.{http,network}.dynamic_modules with
// do_not_close: true. It only wires the filters into proxylib's registry;
// the ABI hooks live in proxylib/abi.
package main

import (
	_ "github.com/wardproxy/ward/proxylib/abi" // the exported ABI hooks
	"github.com/wardproxy/ward/proxylib/testfilters"
)

func init() {
	testfilters.Register()
	registerWard()
}

func main() {}

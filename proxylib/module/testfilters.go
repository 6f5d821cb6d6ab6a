//go:build wardtest

package main

import "github.com/wardproxy/ward/proxylib/testfilters"

// The test module (go build -tags wardtest) also registers the filters
// that prove the binding's contracts against the real Envoy.
func init() { testfilters.Register() }

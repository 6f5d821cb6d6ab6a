package main

import "github.com/wardproxy/ward/proxylib"

// registerWard registers ward's policy filters.
func registerWard(http func(string, proxylib.HTTPConfigFactory), network func(string, proxylib.NetworkConfigFactory)) {
}

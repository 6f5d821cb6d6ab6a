package main

import (
	"github.com/wardproxy/ward/proxylib/abi"
	"github.com/wardproxy/ward/proxylib/policyfilter"
)

// env is the process's policy-filter environment: the one policy
// subscription per agent socket and the access logs, shared by every
// filter configuration Envoy creates.
var env = &policyfilter.Env{Logger: abi.Logger()}

// registerWard registers ward's policy filters.
func registerWard() { env.RegisterAll() }

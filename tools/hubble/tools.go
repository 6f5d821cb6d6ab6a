//go:build tools

// Package tools pins the real hubble CLI (github.com/cilium/cilium/hubble),
// which the observe conformance tests run against wardd's Observer API.
// scripts/setup.d/70-hubble.sh builds it into build/bin/hubble.
package tools

import _ "github.com/cilium/cilium/hubble/cmd"

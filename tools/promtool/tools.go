//go:build tools

// Package tools pins the real promtool
// (github.com/prometheus/prometheus/cmd/promtool), which the metrics test
// runs (`promtool check metrics`) on wardd's exposition.
// scripts/setup.d/70-hubble.sh builds it into build/bin/promtool.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"

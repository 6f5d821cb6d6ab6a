//go:build tools

// Package tools pins the real helm CLI (helm.sh/helm/v3/cmd/helm), built by
// scripts/setup.d/80-kube.sh into build/bin for the chart tests.
package tools

import _ "helm.sh/helm/v3/cmd/helm"

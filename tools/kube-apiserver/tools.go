//go:build tools

// Package tools pins the real kube-apiserver and kubectl (k8s.io/kubernetes,
// built by scripts/setup.d/80-kube.sh into build/bin) for the Kubernetes
// integration tests. Its own module keeps k8s.io/kubernetes out of ward's.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)

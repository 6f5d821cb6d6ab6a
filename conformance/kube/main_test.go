// Package kube runs ward's agents against a real kube-apiserver
// (internal/kubetest): policies, pods, namespaces, services, nodes and
// secrets from the API server, through the agent as wardd runs it.
package kube

import (
	"os"
	"testing"

	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/internal/kubetest"
)

func TestMain(m *testing.M) {
	// A namespaced node's agent is a child process of this test binary.
	node.AgentMain()
	code := m.Run()
	kubetest.StopShared()
	os.Exit(code)
}

package attack

import (
	"os"
	"testing"

	"github.com/wardproxy/ward/conformance/node"
)

// TestMain lets a namespaced node's agent run as a child of the test
// binary (node.NewWith with Options.Namespace).
func TestMain(m *testing.M) {
	node.AgentMain()
	os.Exit(m.Run())
}

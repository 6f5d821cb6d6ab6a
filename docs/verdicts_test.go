package docs

import (
	"testing"

	"github.com/wardproxy/ward/internal/testenv"
)

// TestPolicyFromVerdicts runs policy-from-verdicts.md for real (the seed's
// "Creating Policies from Verdicts" with ward: per-endpoint audit mode, a
// default-deny policy, AUDIT verdicts in hubble observe, ward policy
// suggest applied, enforcement), then troubleshooting.md's commands on the
// same node (endpoint, policy, identity, ipcache, FQDN cache, flows,
// metrics), checking their outputs.
func TestPolicyFromVerdicts(t *testing.T) {
	testenv.File(t, "build/bin/hubble", "run scripts/setup.d/70-hubble.sh (builds the hubble CLI from tools/hubble)")
	runWalkthrough(t, 20, "policy-from-verdicts.md", "troubleshooting.md")
}

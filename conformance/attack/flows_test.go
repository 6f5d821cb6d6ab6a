package attack

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/flow"
)

const attackerPublicPrefix = attackerL4 + `      rules:
        http:
        - method: GET
          path: "/public.*"
`

// TestAttackQueryTokensNotRecorded: tokens in query strings (OAuth access
// tokens, API keys, presigned URLs) do not reach the flow records of the
// node's Envoy, which anyone allowed to read flows (ward monitor, Hubble)
// sees: allowed and denied requests are recorded with their path and
// "?<redacted>" (issue 12 item 12). Needs a libward.so built with the
// redaction (f9652c1).
func TestAttackQueryTokensNotRecorded(t *testing.T) {
	n := node.New(t, pods...)
	echoPath(t, n, "victim", ":80")
	n.WritePolicy(t, "attacker.yaml", attackerPublicPrefix)
	log := filepath.Join(n.StateDir, "flows.jsonl")
	n.Config.Datapath.AccessLog = log
	n.Start(t, 27700, 9114)
	c, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stop()
	url := "http://" + n.Pods["victim"].IP.String()
	node.Eventually(t, "the L7 rule to apply", func() bool {
		return n.Curl(c, "attacker", "-w", " %{http_code}", url+"/public/items?access_token=s3cr3t-allowed") == "/public/items 200"
	})
	if got := n.Curl(c, "attacker", "-w", " %{http_code}", url+"/secret?api_key=s3cr3t-denied"); got != deniedAnswer {
		t.Fatalf("GET /secret?api_key=... = %q; want %q", got, deniedAnswer)
	}
	var paths []string
	node.Eventually(t, "both requests' flow records", func() bool {
		b, err := os.ReadFile(log)
		if err != nil {
			return false
		}
		if strings.Contains(string(b), "s3cr3t") {
			t.Fatalf("a flow record carries a query string's token:\n%s", b)
		}
		paths = paths[:0]
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			var r flow.Record
			if json.Unmarshal([]byte(line), &r) == nil && r.HTTP != nil {
				paths = append(paths, string(r.Verdict)+" "+r.HTTP.Path)
			}
		}
		return slices.Contains(paths, "denied /secret?<redacted>")
	})
	if !slices.Contains(paths, "allowed /public/items?<redacted>") {
		t.Errorf("records %q; want allowed /public/items?<redacted> among them", paths)
	}
}

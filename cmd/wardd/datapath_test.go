package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/servers/deathstar"
	"github.com/wardproxy/ward/internal/testenv"
)

// TestWarddDatapath runs the agent whole on a node of pods: wardd resolves
// the policy directory, loads the BPF datapath, attaches it to the pods'
// veths, writes the maps, and gives Envoy its transparent listener; curl in
// the tiefighter pod reaches the Death Star through bpf_sk_assign and
// Envoy's HTTP rules, xwing is dropped in BPF; editing the policy file
// changes both.
func TestWarddDatapath(t *testing.T) {
	n := newNode(t,
		podSpec{name: "deathstar", labels: map[string]string{"org": "empire", "class": "deathstar"}},
		podSpec{name: "tiefighter", labels: map[string]string{"org": "empire", "class": "tiefighter"}},
		podSpec{name: "xwing", labels: map[string]string{"org": "alliance", "class": "xwing"}})
	n.serve(t, "deathstar", deathstar.New(), ":80")
	b, err := os.ReadFile(filepath.Join(testenv.Root(t), "examples/deathstar/l7/sw_l3_l4_l7_policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	n.writePolicy(t, "policy.yaml", string(b))
	n.start(t, 22000, 9002)

	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	url := "http://" + n.pods["deathstar"].IP.String()
	curl := func(from, method, path string) string {
		return n.curl(c, from, "-X", method, "-w", " %{http_code}", url+path)
	}
	// Until wardd has written the maps nothing is enforced; wait for the
	// proxy's answer.
	eventually(t, "Envoy to deny tiefighter's PUT through wardd's datapath", func() bool {
		return curl("tiefighter", "PUT", "/v1/exhaust-port") == "Access denied 403"
	})
	if got := curl("tiefighter", "POST", "/v1/request-landing"); got != "Ship landed 200" {
		t.Errorf("tiefighter POST = %q; want Ship landed 200", got)
	}
	if got := curl("xwing", "POST", "/v1/request-landing"); got != "error" {
		t.Errorf("xwing POST = %q; want dropped", got)
	}
	// Edit the policy: the alliance may land too (L3/L4 in BPF and L7 in
	// Envoy both change).
	i := strings.LastIndex(string(b), "org: empire")
	n.writePolicy(t, "policy.yaml", string(b[:i])+"org: alliance"+string(b[i+len("org: empire"):]))
	eventually(t, "xwing to land after the policy edit", func() bool {
		return curl("xwing", "POST", "/v1/request-landing") == "Ship landed 200"
	})
}

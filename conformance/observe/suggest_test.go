package observe

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/conformance/servers/deathstar"
	"github.com/wardproxy/ward/internal/testenv"
)

// buildWard builds the ward CLI into a temporary directory.
func buildWard(t *testing.T) string {
	t.Helper()
	testenv.RequireCommand(t, "go")
	bin := filepath.Join(t.TempDir(), "ward")
	build := exec.Command("go", "build", "-o", bin, "./cmd/ward")
	build.Dir = testenv.Root(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ward: %v\n%s", err, out)
	}
	return bin
}

// TestPolicySuggest is the seed's "Creating Policies from Verdicts" round
// trip through wardd: under the Star Wars L7 policy the tiefighter's PUT
// is dropped at L7 and the xwing's connection in BPF; `ward policy
// suggest` (from the live Observer API, and from a saved `hubble observe -o
// json` file: the same policy) writes a CiliumNetworkPolicy; saved into the
// policy directory, it lets exactly that through: the PUT and the xwing on
// port 80, while the tiefighter's other requests stay denied and port 8080
// stays closed.
func TestPolicySuggest(t *testing.T) {
	hubble := testenv.File(t, "build/bin/hubble", "run scripts/setup.d/70-hubble.sh (builds the hubble CLI from tools/hubble)")
	ward := buildWard(t)
	n := node.New(t,
		node.PodSpec{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}},
		node.PodSpec{Name: "tiefighter", Labels: map[string]string{"org": "empire", "class": "tiefighter", "pod-template-hash": "6fb5694d48"}},
		node.PodSpec{Name: "xwing", Labels: map[string]string{"org": "alliance", "class": "xwing"}})
	n.Serve(t, "deathstar", deathstar.New(), ":80", ":8080")
	b, err := os.ReadFile(filepath.Join(testenv.Root(t), "examples/deathstar/l7/sw_l3_l4_l7_policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	n.WritePolicy(t, "deathstar.yaml", string(b))
	n.Start(t, 45100, 9851)

	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	url := "http://" + n.Pods["deathstar"].IP.String()
	curl := func(from, method, path string) string {
		return n.Curl(c, from, "-X", method, "-w", " %{http_code}", url+path)
	}
	node.Eventually(t, "Envoy to deny tiefighter's PUT", func() bool {
		return curl("tiefighter", "PUT", "/v1/exhaust-port") == "Access denied 403"
	})
	if got := curl("xwing", "GET", "/v1/"); got != "error" {
		t.Fatalf("xwing GET before the suggestion = %q; want dropped", got)
	}

	// The verdicts as `hubble observe -o json` saves them, once both are
	// in the flow stream (Envoy ships its records in batches): the PUT
	// dropped at L7 and the xwing's SYN dropped in BPF.
	saved := filepath.Join(t.TempDir(), "flows.json")
	var out []byte
	node.Eventually(t, "hubble observe to show the L7 and the L3/L4 drop", func() bool {
		var err error
		out, err = exec.CommandContext(c, hubble, "observe", "--server", "unix://"+filepath.Join(n.StateDir, "hubble.sock"),
			"--verdict", "DROPPED", "--verdict", "AUDIT", "--last", "1000", "-o", "json").Output()
		if err != nil {
			t.Fatalf("hubble observe: %v\n%s", err, stderrOf(err))
		}
		l7, l4 := false, false
		for _, f := range parseFlows(t, out) {
			l7 = l7 || f.Flow.L7 != nil && f.Flow.L7.HTTP != nil && f.Flow.L7.HTTP.Method == "PUT"
			l4 = l4 || f.Flow.L7 == nil && f.Flow.Source.PodName == "xwing" && f.Flow.DropReason == "POLICY_DENIED"
		}
		return l7 && l4
	})
	if err := os.WriteFile(saved, out, 0o600); err != nil {
		t.Fatal(err)
	}
	if dir := os.Getenv("WARD_SAVE_HUBBLE_JSON"); dir != "" {
		// How policy/suggest/testdata's flows were taken.
		if err := os.WriteFile(filepath.Join(dir, "deathstar.hubble.json"), out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The live API: the verdicts recorded so far.
	cmd := exec.CommandContext(c, ward, "policy", "suggest", "--state-dir", n.StateDir)
	live, err := cmd.Output()
	if err != nil {
		t.Fatalf("ward policy suggest: %v\n%s\nflows:\n%s", err, stderrOf(err), out)
	}
	t.Logf("suggested (live):\n%s", live)
	for _, want := range []string{
		"kind: CiliumNetworkPolicy", "name: deathstar-suggested", "namespace: default",
		"class: deathstar", "org: empire", // endpointSelector
		"class: tiefighter", // fromEndpoints: the sources' identity labels
		"class: xwing", "org: alliance",
		"method: PUT", "path: /v1/exhaust-port", `port: "80"`, "protocol: TCP",
	} {
		if !strings.Contains(string(live), want) {
			t.Errorf("suggested policy lacks %q", want)
		}
	}
	if strings.Contains(string(live), "pod-template-hash") {
		t.Errorf("suggested policy selects pod-template-hash (not identity-relevant)")
	}

	// From the saved file: the same suggestion.
	fromFile, err := exec.CommandContext(c, ward, "policy", "suggest", "--file", saved).Output()
	if err != nil {
		t.Fatalf("ward policy suggest --file: %v\n%s", err, stderrOf(err))
	}
	if string(fromFile) != string(live) {
		t.Errorf("suggestion from the saved hubble output differs from the live one:\n%s\nlive:\n%s", fromFile, live)
	}

	// Applied: the PUT passes, nothing else changed.
	n.WritePolicy(t, "suggested.yaml", string(live))
	node.Eventually(t, "the suggested policy to allow tiefighter's PUT", func() bool {
		// The deathstar answers its exhaust port with a 500 and a panic.
		got := curl("tiefighter", "PUT", "/v1/exhaust-port")
		return strings.HasPrefix(got, "Panic: deathstar exploded") && strings.HasSuffix(got, " 500")
	})
	if got := curl("tiefighter", "DELETE", "/v1/exhaust-port"); got != "Access denied 403" {
		t.Errorf("tiefighter DELETE after the suggestion = %q; want Access denied 403", got)
	}
	if got := curl("tiefighter", "PUT", "/v1/request-landing"); got != "Access denied 403" {
		t.Errorf("tiefighter PUT /v1/request-landing after the suggestion = %q; want Access denied 403", got)
	}
	// The xwing was dropped at L3/L4: now its port 80 is open to it, and
	// only that port.
	if got := curl("xwing", "GET", "/v1/healthz"); !strings.HasSuffix(got, " 200") {
		t.Errorf("xwing GET :80 after the suggestion = %q; want 200", got)
	}
	if got := n.Curl(c, "xwing", url+":8080/v1/healthz"); got != "error" {
		t.Errorf("xwing GET :8080 after the suggestion = %q; want dropped", got)
	}
	if got := n.Curl(c, "tiefighter", url+":8080/v1/healthz"); got != "error" {
		t.Errorf("tiefighter GET :8080 after the suggestion = %q; want dropped", got)
	}
	if got := curl("tiefighter", "POST", "/v1/request-landing"); got != "Ship landed 200" {
		t.Errorf("tiefighter POST after the suggestion = %q; want Ship landed 200", got)
	}
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

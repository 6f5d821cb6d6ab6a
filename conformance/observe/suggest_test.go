package observe

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/agent/api"
	cdns "github.com/wardproxy/ward/conformance/dns"
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
// stays closed. Then the same with the deathstar in audit mode: an audited
// L7 request becomes an HTTP rule (ward policy suggest --since).
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

	// Audit mode at L7: with the deathstar in audit mode the tiefighter's
	// DELETE passes (the deathstar answers 405) recorded AUDIT with its
	// HTTP fields; the suggestion --since then is that rule alone, and
	// once applied the DELETE passes with audit mode off.
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(c, ward, args...).Output()
		if err != nil {
			t.Fatalf("ward %v: %v\n%s", args, err, stderrOf(err))
		}
		return string(out)
	}
	since := time.Now().UTC().Format(time.RFC3339)
	time.Sleep(time.Second) // RFC 3339 has whole seconds: the flows above are before it
	var eps []api.EndpointDetail
	if err := json.Unmarshal([]byte(run("endpoint", "list", "--state-dir", n.StateDir, "-o", "json")), &eps); err != nil {
		t.Fatal(err)
	}
	ds := ""
	for _, e := range eps {
		if e.Name == "deathstar" {
			ds = strconv.FormatUint(e.ID, 10)
		}
	}
	run("endpoint", "config", ds, "audit=on", "--state-dir", n.StateDir)
	last := ""
	node.Eventually(t, "audit mode to let the tiefighter's DELETE through", func() bool {
		last = curl("tiefighter", "DELETE", "/v1/exhaust-port")
		if last != "Method Not Allowed 405" {
			t.Logf("DELETE: %q", last)
		}
		return last == "Method Not Allowed 405"
	})
	var audited string
	node.Eventually(t, "the audited DELETE in the flow stream", func() bool {
		out, err := exec.CommandContext(c, ward, "policy", "suggest", "--state-dir", n.StateDir, "--since", since).Output()
		audited = string(out)
		return err == nil && strings.Contains(audited, "method: DELETE")
	})
	t.Logf("suggested (audit, --since):\n%s", audited)
	if strings.Contains(audited, "class: xwing") || strings.Contains(audited, "method: PUT") {
		t.Errorf("the suggestion --since %s has the flows before it:\n%s", since, audited)
	}
	n.WritePolicy(t, "suggested-audit.yaml", strings.ReplaceAll(audited, "name: deathstar-suggested", "name: deathstar-suggested-audit"))
	run("endpoint", "config", ds, "audit=off", "--state-dir", n.StateDir)
	node.Eventually(t, "audit off, the DELETE allowed by the suggestion", func() bool {
		return curl("tiefighter", "DELETE", "/v1/exhaust-port") == "Method Not Allowed 405"
	})
	if got := curl("tiefighter", "PATCH", "/v1/exhaust-port"); got != "Access denied 403" {
		t.Errorf("tiefighter PATCH with audit off = %q; want Access denied 403", got)
	}
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// TestTroubleshootFQDN follows the seed's "Troubleshooting toFQDNs rules"
// with ward's CLI against wardd: after a lookup through the DNS proxy,
// `ward fqdn cache list` (live) shows the name and its IP for the
// endpoint, `ward ip list` the IP with an fqdn identity, `ward identity
// get` that identity's fqdn labels, `ward policy get` the toFQDNs rule.
func TestTroubleshootFQDN(t *testing.T) {
	testenv.RequireCommand(t, "dig")
	ward := buildWard(t)
	n := node.New(t,
		node.PodSpec{Name: "kube-dns", Labels: map[string]string{"k8s-app": "kube-dns"}},
		node.PodSpec{Name: "mediabot", Labels: map[string]string{"class": "mediabot"}})
	kd := n.Pods["kube-dns"]
	cdns.StartUnbound(t, cdns.Zone{Origin: "github.test.", Body: `@ IN SOA ns.github.test. admin.github.test. 1 3600 600 86400 60
@ IN NS ns.github.test.
api IN A 198.51.100.7
`}, cdns.UnboundConfig{Addr: netip.AddrPortFrom(kd.IP, 53), Wrap: []string{"ip", "netns", "exec", kd.NetNS}})
	n.WritePolicy(t, "fqdn.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: mediabot-fqdn
spec:
  endpointSelector:
    matchLabels: {class: mediabot}
  egress:
  - toEndpoints:
    - matchLabels: {k8s-app: kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns:
        - matchPattern: "*.github.test"
  - toFQDNs:
    - matchName: api.github.test
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
`)
	n.Start(t, 45200, 9852)
	c, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stop()
	wardOut := func(args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(c, ward, append(args, "--state-dir", n.StateDir)...).Output()
		if err != nil {
			t.Fatalf("ward %v: %v\n%s", args, err, stderrOf(err))
		}
		return string(out)
	}
	mb := []string{"ip", "netns", "exec", n.Pods["mediabot"].NetNS}
	node.Eventually(t, "the DNS proxy to answer api.github.test", func() bool {
		return cdns.Dig(t, mb, netip.AddrPortFrom(kd.IP, 53), "api.github.test.").Status == "NOERROR"
	})

	var eps []api.EndpointDetail
	if err := json.Unmarshal([]byte(wardOut("endpoint", "list", "-o", "json")), &eps); err != nil {
		t.Fatal(err)
	}
	var mediabot uint64
	for _, e := range eps {
		if e.Name == "mediabot" {
			mediabot = e.ID
			if !e.EnforceEgress || e.EnforceIngress || e.State != api.StateReady {
				t.Errorf("mediabot %+v; want ready, egress enforced only", e)
			}
		}
	}
	var cache []struct {
		Endpoint uint64   `json:"endpoint"`
		Source   string   `json:"source"`
		Name     string   `json:"name"`
		IPs      []string `json:"ips"`
		TTLLeft  int64    `json:"ttlLeft"`
	}
	if err := json.Unmarshal([]byte(wardOut("fqdn", "cache", "list", "-o", "json")), &cache); err != nil {
		t.Fatal(err)
	}
	if len(cache) != 1 || cache[0].Endpoint != mediabot || cache[0].Name != "api.github.test" || cache[0].Source != "lookup" ||
		!slices.Equal(cache[0].IPs, []string{"198.51.100.7"}) || cache[0].TTLLeft <= 0 {
		t.Errorf("fqdn cache list = %+v; want endpoint %d's lookup of api.github.test -> 198.51.100.7 with TTL left", cache, mediabot)
	}

	var ipc []api.IPCacheEntry
	if err := json.Unmarshal([]byte(wardOut("ip", "list", "-o", "json")), &ipc); err != nil {
		t.Fatal(err)
	}
	var fqdnID uint32
	for _, e := range ipc {
		if e.Prefix == "198.51.100.7/32" {
			fqdnID = e.Identity
			if e.Source != "fqdn" || !slices.Contains(e.Labels, "fqdn:matchName:api.github.test") {
				t.Errorf("ip list 198.51.100.7 = %+v; want an fqdn claim labelled fqdn:matchName:api.github.test", e)
			}
		}
	}
	if fqdnID < 1<<24 {
		t.Fatalf("ip list has no local (fqdn) identity for 198.51.100.7: %+v", ipc)
	}
	var id api.Identity
	if err := json.Unmarshal([]byte(wardOut("identity", "get", strconv.FormatUint(uint64(fqdnID), 10), "-o", "json")), &id); err != nil {
		t.Fatal(err)
	}
	if id.Kind != "fqdn" || !slices.Contains(id.Labels, "reserved:world") {
		t.Errorf("identity get %d = %+v; want an fqdn identity of the world", fqdnID, id)
	}
	if out := wardOut("policy", "get", "io.cilium.k8s.policy.name=mediabot-fqdn", "-o", "json"); !strings.Contains(out, `"matchName": "api.github.test"`) {
		t.Errorf("policy get mediabot-fqdn lacks the toFQDNs rule:\n%s", out)
	}
	if out := wardOut("status", "--verbose"); !strings.Contains(out, "fqdn cache: 1 IPs of names") || !strings.Contains(out, "fqdn 1)") {
		t.Errorf("status --verbose:\n%s", out)
	}
}

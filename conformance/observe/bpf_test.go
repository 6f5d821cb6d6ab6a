package observe

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/conformance/servers/deathstar"
	"github.com/wardproxy/ward/internal/testenv"
)

// TestHubbleBPFFlows: the BPF datapath's events reach `hubble observe`
// beside the proxy's: under the Star Wars L3/L4/L7 policy the xwing's
// connection is DROPPED in BPF (POLICY_DENIED, an L3/L4 flow with both
// endpoints' labels), the tiefighter's new connection has its policy
// verdict (FORWARDED, L3/L4), its PUT is DROPPED at L7 with the HTTP
// fields and its POST FORWARDED; --verdict and --from-label select them.
func TestHubbleBPFFlows(t *testing.T) {
	hubble := testenv.File(t, "build/bin/hubble", "run scripts/setup.d/70-hubble.sh (builds the hubble CLI from tools/hubble)")
	n := node.New(t,
		node.PodSpec{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}},
		node.PodSpec{Name: "tiefighter", Labels: map[string]string{"org": "empire", "class": "tiefighter"}},
		node.PodSpec{Name: "xwing", Labels: map[string]string{"org": "alliance", "class": "xwing"}})
	n.Serve(t, "deathstar", deathstar.New(), ":80")
	b, err := os.ReadFile(filepath.Join(testenv.Root(t), "examples/deathstar/l7/sw_l3_l4_l7_policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	n.WritePolicy(t, "deathstar.yaml", string(b))
	n.Start(t, 47700, 9477)

	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	url := "http://" + n.Pods["deathstar"].IP.String()
	curl := func(from, method, path string) string {
		return n.Curl(c, from, "-X", method, "-w", " %{http_code}", url+path)
	}
	node.Eventually(t, "Envoy to deny tiefighter's PUT", func() bool {
		return curl("tiefighter", "PUT", "/v1/exhaust-port") == "Access denied 403"
	})
	if got := curl("tiefighter", "POST", "/v1/request-landing"); got != "Ship landed 200" {
		t.Fatalf("tiefighter POST = %q; want Ship landed 200", got)
	}
	if got := curl("xwing", "GET", "/v1/healthz"); got != "error" {
		t.Fatalf("xwing GET = %q; want dropped", got)
	}

	server := "unix://" + filepath.Join(n.StateDir, "hubble.sock")
	observe := func(args ...string) []*hubbleFlow {
		t.Helper()
		out, err := exec.CommandContext(c, hubble, append([]string{"observe", "--server", server, "-o", "json", "--last", "1000"}, args...)...).Output()
		if err != nil {
			t.Fatalf("hubble observe %v: %v\n%s", args, err, stderrOf(err))
		}
		return parseFlows(t, out)
	}
	xwingDrop := func(f *hubbleFlow) bool {
		return f.Flow.L7 == nil && f.Flow.Source.PodName == "xwing" && f.Flow.Verdict == "DROPPED"
	}
	tieVerdict := func(f *hubbleFlow) bool {
		return f.Flow.L7 == nil && f.Flow.Source.PodName == "tiefighter" && f.Flow.Verdict == "FORWARDED" && f.Flow.Type == "L3_L4"
	}
	l7 := func(method, verdict string) func(*hubbleFlow) bool {
		return func(f *hubbleFlow) bool {
			return f.Flow.L7 != nil && f.Flow.L7.HTTP != nil && f.Flow.L7.HTTP.Method == method && f.Flow.Verdict == verdict
		}
	}
	find := func(fs []*hubbleFlow, pred func(*hubbleFlow) bool) *hubbleFlow {
		for _, f := range fs {
			if pred(f) {
				return f
			}
		}
		return nil
	}
	var all []*hubbleFlow
	node.Eventually(t, "hubble observe to show the BPF and the L7 flows", func() bool {
		all = observe()
		return find(all, xwingDrop) != nil && find(all, tieVerdict) != nil && find(all, l7("PUT", "DROPPED")) != nil && find(all, l7("POST", "FORWARDED")) != nil
	})
	drop := find(all, xwingDrop)
	if f := drop.Flow; f.DropReason != "POLICY_DENIED" || f.Type != "L3_L4" || f.Direction != "INGRESS" || f.L4.TCP == nil || f.L4.TCP.DestinationPort != 80 ||
		f.IP.Source != n.Pods["xwing"].IP.String() || f.IP.Destination != n.Pods["deathstar"].IP.String() || f.IsReply == nil || *f.IsReply {
		t.Errorf("xwing drop = %s; want an INGRESS L3_L4 TCP :80 drop, POLICY_DENIED, not a reply", drop)
	}
	if src, dst := drop.Flow.Source, drop.Flow.Destination; !contains(src.Labels, "k8s:class=xwing") || src.Identity == 0 ||
		dst.PodName != "deathstar" || dst.ID == 0 || !contains(dst.Labels, "k8s:class=deathstar") {
		t.Errorf("xwing drop endpoints = %+v -> %+v; want the xwing's and the deathstar's identities and labels", src, dst)
	}
	if v := find(all, tieVerdict); v.Flow.Direction != "INGRESS" || v.Flow.L4.TCP == nil || v.Flow.L4.TCP.DestinationPort != 80 || v.Flow.Destination.PodName != "deathstar" {
		t.Errorf("tiefighter policy verdict = %s; want an INGRESS TCP :80 verdict at the deathstar", v)
	}
	if put := find(all, l7("PUT", "DROPPED")); put.Flow.L7.HTTP.Code != 403 || put.Flow.Source.PodName != "tiefighter" {
		t.Errorf("PUT = %s; want the tiefighter's, 403", put)
	}

	// Filters select the BPF flows like any other.
	got := observe("--verdict", "DROPPED", "--from-label", "class=xwing")
	if len(got) == 0 {
		t.Fatal("--verdict DROPPED --from-label class=xwing: no flow")
	}
	for _, f := range got {
		if f.Flow.Verdict != "DROPPED" || f.Flow.Source.PodName != "xwing" {
			t.Errorf("--verdict DROPPED --from-label class=xwing: %s", f)
		}
	}
	if fe := n.Agent.Status().FlowEvents; fe == nil || fe.Read == 0 || fe.Lost != 0 || fe.Malformed != 0 {
		t.Errorf("status flowEvents = %+v; want events read, none lost or malformed", fe)
	}
}

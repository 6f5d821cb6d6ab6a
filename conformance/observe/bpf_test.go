package observe

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/conformance/netns"
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

// TestHubbleSocketModeDrops: with datapath.mode socket a connect the
// egress policy denies fails in the client with EPERM and builds no
// packet; the socket hook reports it, so `hubble observe` shows it as
// any drop: DROPPED, POLICY_DENIED, EGRESS from the client pod (its
// address and labels, filled from its endpoint) to the destination's
// port, and --from-pod selects it.
func TestHubbleSocketModeDrops(t *testing.T) {
	if netns.CgroupRoot() == "" {
		t.Skip("no cgroup v2 hierarchy mounted (socket mode needs one)")
	}
	hubble := testenv.File(t, "build/bin/hubble", "run scripts/setup.d/70-hubble.sh (builds the hubble CLI from tools/hubble)")
	n := node.New(t,
		node.PodSpec{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}},
		node.PodSpec{Name: "xwing", Labels: map[string]string{"org": "alliance", "class": "xwing"}})
	n.Serve(t, "deathstar", deathstar.New(), ":80", ":8080")
	n.WritePolicy(t, "xwing-egress.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: xwing-egress
spec:
  endpointSelector:
    matchLabels: {class: xwing}
  egress:
  - toEndpoints:
    - matchLabels: {class: deathstar}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
`)
	n.Config.Datapath.Mode = agent.ModeSocket
	n.Start(t, 49960, 9501)

	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	ds := n.Pods["deathstar"].IP
	node.Eventually(t, "the xwing's egress policy to allow port 80", func() bool {
		return n.Curl(c, "xwing", "-w", " %{http_code}", "http://"+ds.String()+"/v1/healthz") == `{ "status": "ok" } 200`
	})
	// bash's /dev/tcp: one connect(2), its errno in the message.
	if out, err := n.Pods["xwing"].Run(c, "timeout", "5", "bash", "-c", "exec 3<>/dev/tcp/"+ds.String()+"/8080"); err == nil || !strings.Contains(out, "Operation not permitted") {
		t.Fatalf("xwing connect :8080 = %q, %v; want EPERM from the socket hook", out, err)
	}

	server := "unix://" + filepath.Join(n.StateDir, "hubble.sock")
	var drop *hubbleFlow
	node.Eventually(t, "hubble observe --from-pod xwing to show the denied connect", func() bool {
		out, err := exec.CommandContext(c, hubble, "observe", "--server", server, "-o", "json", "--last", "1000", "--verdict", "DROPPED", "--from-pod", "xwing").Output()
		if err != nil {
			t.Fatalf("hubble observe: %v\n%s", err, stderrOf(err))
		}
		for _, f := range parseFlows(t, out) {
			if f.Flow.L4.TCP != nil && f.Flow.L4.TCP.DestinationPort == 8080 {
				drop = f
			}
		}
		return drop != nil
	})
	if f := drop.Flow; f.DropReason != "POLICY_DENIED" || f.Type != "L3_L4" || f.Direction != "EGRESS" ||
		f.IP.Source != n.Pods["xwing"].IP.String() || f.IP.Destination != ds.String() ||
		!contains(f.Source.Labels, "k8s:class=xwing") || f.Destination.PodName != "deathstar" {
		t.Errorf("socket hook drop = %s; want the xwing's EGRESS TCP :8080 drop to the deathstar, POLICY_DENIED", drop)
	}
}

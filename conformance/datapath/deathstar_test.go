// Package datapath runs ward whole through its agent (package agent, what
// wardd runs), configured as a user configures it: pods are network
// namespaces with veth pairs, the agent resolves the policy directory,
// loads the eBPF datapath onto the pods' veths, writes the maps and gives
// the real Envoy its transparent listeners; the policy-selected flows reach
// Envoy by bpf_sk_assign and libward.so's filters, which find the endpoint
// and the peer's identity from the connection's real addresses. Clients are
// curl, dig and the like inside the pods.
package datapath

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/conformance/servers/deathstar"
	"github.com/wardproxy/ward/internal/testenv"
	"github.com/wardproxy/ward/xds/npds"
)

var deathstarPods = []node.PodSpec{
	{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}},
	{Name: "tiefighter", Labels: map[string]string{"org": "empire", "class": "tiefighter"}},
	{Name: "xwing", Labels: map[string]string{"org": "alliance", "class": "xwing"}},
}

// TestDeathstar is the seed's Star Wars demo through the agent: tiefighter
// reaches the Death Star through bpf_sk_assign and Envoy's HTTP rules,
// xwing and other ports are dropped in BPF, the filter's records name the
// real peers, and editing the policy file changes BPF and Envoy together.
func TestDeathstar(t *testing.T) {
	n := node.New(t, deathstarPods...)
	n.Serve(t, "deathstar", deathstar.New(), ":80", ":8080")
	b, err := os.ReadFile(filepath.Join(testenv.Root(t), "examples/deathstar/l7/sw_l3_l4_l7_policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	n.WritePolicy(t, "policy.yaml", string(b))
	accessLog := filepath.Join(n.StateDir, "access.jsonl")
	n.Config.Datapath.AccessLog = accessLog
	n.Start(t, 22000, 9002)

	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	ds, tf := n.Pods["deathstar"], n.Pods["tiefighter"]
	url := "http://" + ds.IP.String()
	curl := func(from, method, path string) string {
		return n.Curl(c, from, "-X", method, "-w", " %{http_code}", url+path)
	}
	node.Eventually(t, "Envoy to deny tiefighter's PUT through the datapath", func() bool {
		return curl("tiefighter", "PUT", "/v1/exhaust-port") == "Access denied 403"
	})
	if got := curl("tiefighter", "POST", "/v1/request-landing"); got != "Ship landed 200" {
		t.Errorf("tiefighter POST = %q; want Ship landed 200", got)
	}
	if got := curl("xwing", "POST", "/v1/request-landing"); got != "error" {
		t.Errorf("xwing POST = %q; want dropped", got)
	}
	if got := n.Curl(c, "tiefighter", "-w", " %{http_code}", url+":8080/"); got != "error" {
		t.Errorf("tiefighter :8080 = %q; want dropped at L3/L4", got)
	}
	counters, err := redirect.PinnedCounters(n.Config.Datapath.PinDir)
	if err != nil {
		t.Fatal(err)
	}
	redirected := uint64(0)
	for _, ctr := range counters {
		if ctr.Reason == redirect.ReasonRedirected {
			redirected += ctr.Packets
		}
	}
	if redirected == 0 {
		t.Errorf("redirected counter is 0; the flows did not go through bpf_sk_assign: %+v", counters)
	}
	// ward status: every policy resource applied by the proxy, every
	// endpoint ready.
	node.Eventually(t, "status to show every policy resource applied", func() bool {
		d, ok := n.Agent.Status().Delivery[npds.NetworkPolicyType]
		return ok && d.Total == 3 && d.Acked == 3 && len(d.NotApplied) == 0
	})
	for _, e := range n.Agent.Status().Endpoints {
		if e.State != "ready" || e.Identity == 0 {
			t.Errorf("endpoint %s: %+v; want ready with an identity", e.Name, e)
		}
	}
	// The filter saw the real peer: records name tiefighter's address.
	node.Eventually(t, "the access log to name tiefighter -> deathstar:80", func() bool {
		logb, _ := os.ReadFile(accessLog)
		return strings.Contains(string(logb), `"ip":"`+tf.IP.String()+`"`) && strings.Contains(string(logb), `"ip":"`+ds.IP.String()+`","port":80`)
	})
	// Edit the policy: the alliance may land too (L3/L4 in BPF and L7 in
	// Envoy both change).
	i := strings.LastIndex(string(b), "org: empire")
	n.WritePolicy(t, "policy.yaml", string(b[:i])+"org: alliance"+string(b[i+len("org: empire"):]))
	last := ""
	node.Eventually(t, "xwing to land after the policy edit", func() bool {
		last = curl("xwing", "POST", "/v1/request-landing")
		if last != "Ship landed 200" {
			t.Logf("xwing POST = %q; status %+v", last, n.Agent.Status().Endpoints)
		}
		return last == "Ship landed 200"
	})
}

// TestRestartKeepsLastGoodPolicy: wardd restarted over its pinned maps
// while the policy file is invalid (a half-written edit) or the policy
// directory is gone enforces the last good policy — it never publishes an
// incomplete one — and says so in its status.
func TestRestartKeepsLastGoodPolicy(t *testing.T) {
	n := node.New(t, deathstarPods...)
	n.Serve(t, "deathstar", deathstar.New(), ":80")
	b, err := os.ReadFile(filepath.Join(testenv.Root(t), "examples/deathstar/l7/sw_l3_l4_l7_policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	n.WritePolicy(t, "policy.yaml", string(b))
	n.Start(t, 25000, 9005)
	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	url := "http://" + n.Pods["deathstar"].IP.String()
	curl := func(from, method, path string) string {
		return n.Curl(c, from, "-X", method, "-w", " %{http_code}", url+path)
	}
	enforced := func(when string) {
		t.Helper()
		node.Eventually(t, "Envoy to deny tiefighter's PUT "+when, func() bool {
			return curl("tiefighter", "PUT", "/v1/exhaust-port") == "Access denied 403"
		})
		if got := curl("xwing", "POST", "/v1/request-landing"); got != "error" {
			t.Errorf("%s: xwing POST = %q; want dropped", when, got)
		}
		if got := curl("tiefighter", "POST", "/v1/request-landing"); got != "Ship landed 200" {
			t.Errorf("%s: tiefighter POST = %q; want Ship landed 200", when, got)
		}
	}
	enforced("at first start")

	n.Stop(t)
	n.WritePolicy(t, "policy.yaml", string(b[:len(b)/2])) // half-written
	n.Start(t, 25000, 9005)
	enforced("after a restart with the file half-written")
	st := n.Agent.Status()
	if st.Policy == nil || len(st.Policy.Errors) != 1 || !strings.Contains(st.Policy.Errors[0].File, "policy.yaml") {
		t.Errorf("status policy = %+v; want policy.yaml's error", st.Policy)
	}

	n.Stop(t)
	if err := os.RemoveAll(n.PolicyDir); err != nil {
		t.Fatal(err)
	}
	n.Start(t, 25000, 9005)
	enforced("after a restart with the policy directory gone")
	if st := n.Agent.Status(); st.Policy == nil || !strings.Contains(st.Policy.Error, "policies in force are kept") {
		t.Errorf("status policy = %+v; want the missing directory reported", st.Policy)
	}
}

// TestRestartPrunesStaleIPCache: an ipcache entry a previous run left in
// the pinned map that no owner claims any more (a pod deleted while wardd
// was down) is deleted once every owner has claimed again, and the
// endpoints' own entries stay.
func TestRestartPrunesStaleIPCache(t *testing.T) {
	n := node.New(t, deathstarPods[:2]...)
	n.WritePolicy(t, "policy.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {matchLabels: {class: deathstar}}\n  ingress: [{fromEndpoints: [{matchLabels: {org: empire}}]}]\n")
	n.Start(t, 26000, 9006)
	n.Stop(t)
	stale := netip.MustParsePrefix("10.250.0.7/32")
	dp, err := redirect.Load(redirect.Config{PinDir: n.Config.Datapath.PinDir})
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.IPCache().Upsert(stale, 54321); err != nil {
		t.Fatal(err)
	}
	dp.Close()
	n.Start(t, 26000, 9006)
	ipc := func() map[netip.Prefix]uint32 {
		dp, err := redirect.Load(redirect.Config{PinDir: n.Config.Datapath.PinDir})
		if err != nil {
			t.Fatal(err)
		}
		defer dp.Close()
		m, err := dp.IPCache().Entries()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	node.Eventually(t, "the stale ipcache entry to be pruned", func() bool { _, ok := ipc()[stale]; return !ok })
	ds := n.Pods["deathstar"].IP
	if id, ok := ipc()[netip.PrefixFrom(ds, ds.BitLen())]; !ok || id == 0 {
		t.Errorf("deathstar's own ipcache entry = %d, %v; want kept", id, ok)
	}
}

// TestEnforcingWhileWarddStopped: with envoy keepRunning, a graceful stop
// of wardd (a rolling restart) leaves the BPF datapath, the proxy routing
// and Envoy enforcing: allowed requests keep landing, denied ones keep
// their 403 and xwing stays dropped; the next wardd adopts Envoy.
func TestEnforcingWhileWarddStopped(t *testing.T) {
	n := node.New(t, deathstarPods...)
	n.Serve(t, "deathstar", deathstar.New(), ":80")
	b, err := os.ReadFile(filepath.Join(testenv.Root(t), "examples/deathstar/l7/sw_l3_l4_l7_policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	n.WritePolicy(t, "policy.yaml", string(b))
	n.Config.Envoy.KeepRunning = true
	n.Start(t, 35000, 9350)
	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	url := "http://" + n.Pods["deathstar"].IP.String()
	curl := func(from, method, path string) string {
		return n.Curl(c, from, "-X", method, "-w", " %{http_code}", url+path)
	}
	check := func(when string) {
		t.Helper()
		for _, tc := range []struct{ from, method, path, want string }{
			{"tiefighter", "POST", "/v1/request-landing", "Ship landed 200"},
			{"tiefighter", "PUT", "/v1/exhaust-port", "Access denied 403"},
			{"xwing", "POST", "/v1/request-landing", "error"},
		} {
			if got := curl(tc.from, tc.method, tc.path); got != tc.want {
				t.Errorf("%s: %s %s %s = %q; want %q", when, tc.from, tc.method, tc.path, got, tc.want)
			}
		}
	}
	node.Eventually(t, "the policy in force", func() bool { return curl("tiefighter", "PUT", "/v1/exhaust-port") == "Access denied 403" })
	check("wardd running")
	n.Stop(t)
	check("wardd stopped")
	n.Config.Envoy.KeepRunning = false
	n.Start(t, 35000, 9350)
	if st := n.Agent.Status(); st.Envoy == nil || st.Envoy.Adopted != 1 || st.Envoy.Starts != 0 {
		t.Errorf("after the restart: envoy %+v; want adopted, none started", st.Envoy)
	}
	check("wardd restarted")
}

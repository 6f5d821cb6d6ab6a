package foundation_test

import (
	"os/exec"

	"github.com/wardproxy/ward/internal/testenv"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/stack"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

// TestPolicyNACK: a policy resource the in-Envoy client cannot compile is
// NACKed with the reason, and the proxy keeps the previous version.
func TestPolicyNACK(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	up := newUpstream(t)
	port := stack.FreePort(t)
	res := upstreamCluster(t, "up", up.Server)
	// The ward.http filter starts the subscription.
	l, err := xds.HTTPListener{Name: "h", Address: "127.0.0.1", Port: port, Cluster: "up",
		Filters: []xds.ModuleFilter{{Name: "ward.http", Config: s.HTTPFilterConfig(nil)}}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	res.Listeners = []typesResource{l}
	s.PushEnvoy(t, res)
	good := []*npds.NetworkPolicy{{Name: "ep", EndpointIps: []string{"10.0.0.1"}}}
	s.PushPolicy(t, good, nil)
	okVersion := s.XDS.Acked(npds.NetworkPolicyType)

	bad := []*npds.NetworkPolicy{{Name: "ep", EndpointIps: []string{"not-an-ip"}}}
	v := s.PushPolicyOnly(bad)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if n, ok := s.XDS.LastNACK(npds.NetworkPolicyType); ok && n.Version == v {
			if !strings.Contains(n.Message, "endpoint_ips[0]") {
				t.Errorf("NACK message %q does not name the field", n.Message)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no NACK for version %s; log:\n%s", v, s.LogTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := s.XDS.Acked(npds.NetworkPolicyType); got != okVersion {
		t.Errorf("acked version = %s; want %s (the last good one)", got, okVersion)
	}
}

// curl runs the real curl and returns "status body".
func curl(t *testing.T, args ...string) string {
	t.Helper()
	bin := testenv.RequireCommand(t, "curl")
	out, err := exec.Command(bin, append([]string{"-s", "-w", " %{http_code}", "--max-time", "10"}, args...)...).Output()
	if err != nil {
		t.Fatalf("curl %v: %v (%s)", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

func firstRulePolicy(paths ...string) []*npds.NetworkPolicy {
	var rules []l7.HTTPRule
	for _, p := range paths {
		rules = append(rules, l7.HTTPRule{Method: "GET", Path: p})
	}
	return []*npds.NetworkPolicy{{
		Name:        "deathstar",
		EndpointIps: []string{"10.0.0.1"},
		IngressPerPortPolicies: []*npds.PortNetworkPolicy{{
			Port: 80,
			Rules: []*npds.PortNetworkPolicyRule{{
				RemoteIdentities: []uint32{1000},
				L7:               npds.HTTP(rules...),
			}},
		}},
	}}
}

var testHosts = []*npds.NetworkPolicyHosts{{Identity: 1000, HostAddresses: []string{"127.0.0.1"}}}

// TestFirstHTTPRule is the foundation's end-to-end rule: curl through the
// real Envoy to a real upstream. GET /public is allowed (the upstream
// answers), GET /private gets ward's 403 Access denied; every request of a
// keep-alive connection is checked; a new policy version (no Envoy restart,
// no listener change) flips the verdict; a policy the proxy cannot compile
// is NACKed and the previous one stays; when the agent goes away, Envoy
// keeps enforcing the last policy.
//
// The client talks to the Envoy listener directly (no BPF redirect): the
// listener's filter config names the endpoint and port whose policy
// applies, and the identity table maps 127.0.0.1 to identity 1000.
func TestFirstHTTPRule(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	up := newUpstream(t)
	port := stack.FreePort(t)
	res := upstreamCluster(t, "up", up.Server)
	l, err := xds.HTTPListener{Name: "h", Address: "127.0.0.1", Port: port, Cluster: "up",
		Filters: []xds.ModuleFilter{{Name: "ward.http", Config: s.HTTPFilterConfig(map[string]any{"endpoint": "deathstar", "port": 80})}}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	res.Listeners = []typesResource{l}
	s.PushEnvoy(t, res)
	s.PushPolicy(t, firstRulePolicy("/public"), testHosts)
	base := "http://127.0.0.1:" + itoa(port)

	if got := curl(t, base+"/public"); got != "upstream:/public 200" {
		t.Errorf("GET /public = %q; want the upstream's 200", got)
	}
	if got := curl(t, base+"/private"); got != "Access denied\r\n 403" {
		t.Errorf("GET /private = %q; want ward's 403 Access denied", got)
	}
	if got := curl(t, "-X", "POST", base+"/public"); got != "Access denied\r\n 403" {
		t.Errorf("POST /public = %q; want 403 (method is part of the rule)", got)
	}
	// Keep-alive: both requests go over one connection; each is checked.
	if got := curl(t, base+"/public", base+"/private"); got != "upstream:/public 200Access denied\r\n 403" {
		t.Errorf("keep-alive pair = %q; want 200 then 403", got)
	}

	// A new policy version flips the verdict, with no listener change.
	listenersBefore := s.Stat(t, "listener_manager.lds.update_success")
	start := time.Now()
	s.PushPolicy(t, firstRulePolicy("/public", "/private"), testHosts)
	for curl(t, base+"/private") != "upstream:/private 200" {
		if time.Since(start) > 15*time.Second {
			t.Fatal("GET /private still denied 15 s after the policy allowing it was acked")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("policy flip: acked and enforced %v after the push", time.Since(start))
	if after := s.Stat(t, "listener_manager.lds.update_success"); after != listenersBefore {
		t.Errorf("lds updates %d -> %d; a policy change must not touch listeners", listenersBefore, after)
	}

	// A policy the proxy cannot compile: NACK, previous version enforced.
	good := s.XDS.Acked(npds.NetworkPolicyType)
	bad := firstRulePolicy("/public")
	bad[0].EndpointIps = []string{"10.0.0.999"}
	v := s.PushPolicyOnly(bad)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if n, ok := s.XDS.LastNACK(npds.NetworkPolicyType); ok && n.Version == v {
			if !strings.Contains(n.Message, "endpoint_ips[0]") {
				t.Errorf("NACK %q does not name the bad field", n.Message)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no NACK for %s", v)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := s.XDS.Acked(npds.NetworkPolicyType); got != good {
		t.Errorf("acked = %s after a NACK; want %s", got, good)
	}
	if got := curl(t, base+"/private"); got != "upstream:/private 200" {
		t.Errorf("after NACK GET /private = %q; want the previous policy's 200", got)
	}

	// The agent goes away: Envoy keeps enforcing the last good policy.
	s.PushPolicy(t, firstRulePolicy("/public"), testHosts)
	s.StopXDS()
	time.Sleep(200 * time.Millisecond)
	if got := curl(t, base+"/public"); got != "upstream:/public 200" {
		t.Errorf("agent gone: GET /public = %q; want 200", got)
	}
	if got := curl(t, base+"/private"); got != "Access denied\r\n 403" {
		t.Errorf("agent gone: GET /private = %q; want 403", got)
	}
	if n := s.Proc.Starts(); n != 1 {
		t.Errorf("envoy started %d times; want 1", n)
	}
}

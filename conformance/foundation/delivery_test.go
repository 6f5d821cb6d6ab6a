package foundation_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/stack"
	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

// deathstarListener starts the stack with one ward.http listener enforcing
// endpoint deathstar's port 80 policy in front of a real upstream, and
// returns the listener's base URL and the Envoy resources.
func deathstarListener(t *testing.T, s *stack.Stack) (string, xds.EnvoyResources) {
	t.Helper()
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
	return "http://127.0.0.1:" + itoa(port), res
}

// waitUntil polls cond; the deadline only bounds a hung test.
func waitUntil(t *testing.T, what string, s *stack.Stack, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; envoy log:\n%s", what, s.LogTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRejectedResourceKeepsRevocation is issue 12 item 3 through the real
// Envoy: one policy update revokes GET /private on deathstar and carries a
// resource the in-Envoy compiler rejects (another endpoint's L7 rules). The
// revocation is enforced, the update is NACKed naming the bad resource,
// the status shows its error; once fixed it applies and the revocation
// still holds.
func TestRejectedResourceKeepsRevocation(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	base, _ := deathstarListener(t, s)
	other := func(l7 *npds.L7Rules) *npds.NetworkPolicy {
		return &npds.NetworkPolicy{Name: "other", EndpointIps: []string{"10.0.0.2"}, IngressPerPortPolicies: []*npds.PortNetworkPolicy{
			{Port: 80, Rules: []*npds.PortNetworkPolicyRule{{RemoteIdentities: []uint32{1000}, L7: l7}}},
		}}
	}
	s.PushPolicy(t, append(firstRulePolicy("/public", "/private"), other(npds.HTTP())), testHosts)
	if got := curl(t, base+"/private"); got != "upstream:/private 200" {
		t.Fatalf("GET /private = %q; want 200 before the revocation", got)
	}

	bad := other(&npds.L7Rules{Rules: "not an L7 rule encoding"})
	v := s.PushPolicyOnly(append(firstRulePolicy("/public"), bad))
	waitUntil(t, "a NACK of "+v, s, func() bool { n, ok := s.XDS.LastNACK(npds.NetworkPolicyType); return ok && n.Version == v })
	if got := curl(t, base+"/private"); got != "Access denied\r\n 403" {
		t.Errorf("GET /private after its revocation (next to a rejected resource) = %q; want 403", got)
	}
	if got := curl(t, base+"/public"); got != "upstream:/public 200" {
		t.Errorf("GET /public = %q; want 200", got)
	}
	st := map[string]xds.ResourceStatus{}
	for _, r := range s.XDS.Resources(npds.NetworkPolicyType) {
		st[r.Name] = r
	}
	if r := st["other"]; r.Acked || r.Error == "" || !strings.Contains(r.Error, "other") {
		t.Errorf("status of other = %+v; want not acked, with its error", r)
	}
	if r := st["deathstar"]; !r.Acked || r.Error != "" {
		t.Errorf("status of deathstar = %+v; want acked", r)
	}

	s.PushPolicy(t, append(firstRulePolicy("/public"), other(npds.HTTP())), testHosts)
	for _, r := range s.XDS.Resources(npds.NetworkPolicyType) {
		if !r.Acked || r.Error != "" {
			t.Errorf("status of %s after the fix = %+v; want acked", r.Name, r)
		}
	}
	if got := curl(t, base+"/private"); got != "Access denied\r\n 403" {
		t.Errorf("GET /private after the fix = %q; want 403 (still revoked)", got)
	}
}

// TestPolicyClientReconnects: the agent goes away and a new one serves the
// same socket with a changed policy; the Go filters inside the same Envoy
// reconnect and enforce it.
func TestPolicyClientReconnects(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	base, res := deathstarListener(t, s)
	s.PushPolicy(t, firstRulePolicy("/public"), testHosts)
	if got := curl(t, base+"/private"); got != "Access denied\r\n 403" {
		t.Fatalf("GET /private = %q; want 403", got)
	}

	s.StopXDS()
	if got := curl(t, base+"/private"); got != "Access denied\r\n 403" {
		t.Errorf("agent gone: GET /private = %q; want 403", got)
	}
	srv, err := xds.New(xds.Config{Socket: s.Socket, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.SetEnvoyResources(context.Background(), s.Node, res); err != nil {
		t.Fatal(err)
	}
	srv.SetHosts(testHosts)
	v := srv.SetPolicies(firstRulePolicy("/public", "/private"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("second xds server: %v", err)
		}
	})

	waitUntil(t, "the reconnected proxy to ack "+v, s, func() bool { return srv.Acked(npds.NetworkPolicyType) == v })
	if got := curl(t, base+"/private"); got != "upstream:/private 200" {
		t.Errorf("GET /private under the new agent's policy = %q; want 200", got)
	}
	for _, r := range srv.Resources(npds.NetworkPolicyType) {
		if !r.Acked {
			t.Errorf("status of %s = %+v; want acked", r.Name, r)
		}
	}
	if n := s.Proc.Starts(); n != 1 {
		t.Errorf("envoy started %d times; want 1", n)
	}
}

package policyfilter

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

// TestConfigWaitsForFirstPolicy: a filter configuration with
// wait_first_policy_ms (wardd's) is created only once the policy
// subscription holds the agent's state, so the listener Envoy then starts
// decides its first request by that policy (CI saw a listener's first
// requests answered 403 for the 75 ms between Envoy's workers starting and
// the policy arriving).
func TestConfigWaitsForFirstPolicy(t *testing.T) {
	dir, err := os.MkdirTemp("", "firstpol-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "xds.sock")
	srv, err := xds.New(xds.Config{Socket: socket, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	srv.SetPolicies([]*npds.NetworkPolicy{{Name: "deathstar", EndpointIps: []string{"10.0.0.2"}, IngressPerPortPolicies: []*npds.PortNetworkPolicy{
		{Port: 80, Rules: []*npds.PortNetworkPolicyRule{{RemoteIdentities: []uint32{1000}, L7: npds.HTTP()}}},
	}}})

	var e Env
	raw := fmt.Sprintf(`{"xds_socket": %q, "node": "n", "wait_first_policy_ms": 5000}`, socket)
	cfg, err := e.NewHTTPConfig([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if _, held := cfg.(*httpConfig).client.State().Endpoint("deathstar"); !held {
		t.Error("the configuration was created before its subscription held the agent's policy")
	}
}

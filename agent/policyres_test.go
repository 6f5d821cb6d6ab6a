package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	status "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

// TestPolicyResourcesFQDNHosts: the identity table carries the DNS proxy's
// claims with every publish and with each claim, but a claim before the
// first publish sends nothing (the claims alone would replace the
// endpoints' addresses in an Envoy adopted from the previous run).
func TestPolicyResourcesFQDNHosts(t *testing.T) {
	srv, err := xds.New(xds.Config{Socket: filepath.Join(t.TempDir(), "xds.sock")})
	if err != nil {
		t.Fatal(err)
	}
	claims := map[netip.Prefix]uint32{netip.MustParsePrefix("192.0.2.7/32"): 16777217}
	p := &policyResources{srv: srv, log: slog.New(slog.DiscardHandler), fqdn: func() map[netip.Prefix]uint32 { return claims }}
	hosts := func() []string {
		var out []string
		for _, r := range srv.Resources(npds.NetworkPolicyHostsType) {
			out = append(out, r.Name)
		}
		return out
	}
	if v := p.syncHosts(); v != "" || len(hosts()) != 0 {
		t.Fatalf("syncHosts before the first Apply = %q, hosts %v; want nothing sent", v, hosts())
	}
	repo := policy.NewRepository(policy.Config{})
	if _, err := repo.UpsertEndpoint(policy.Endpoint{ID: 1, Labels: policy.K8sLabels(map[string]string{"app": "a"}, "default")}); err != nil {
		t.Fatal(err)
	}
	st := &State{Policy: repo.Snapshot(), Workloads: []Workload{{Endpoint: Endpoint{Name: "a", ID: 1}, Addrs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}}}
	if err := p.Apply(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if got := hosts(); len(got) != 2 || !slices.Contains(got, "16777217") {
		t.Fatalf("hosts after Apply = %v; want the endpoint's identity and 16777217", got)
	}
	claims[netip.MustParsePrefix("198.51.100.1/32")] = 16777218
	if v := p.syncHosts(); v == "" || !slices.Contains(hosts(), "16777218") {
		t.Fatalf("syncHosts after a claim = %q, hosts %v; want 16777218 sent", v, hosts())
	}
}

// TestPolicyResourcesWaitForProxy: a publish's proxy resources return only
// once the connected proxy applied them, so the datapath, the next
// consumer, redirects a new endpoint's traffic to an Envoy that knows its
// address (TestTwoNodes saw a recreated pod's allowed POST answered 403
// while Envoy's identity table lagged the BPF ipcache). A rejection ends
// the wait with the proxy's reason.
func TestPolicyResourcesWaitForProxy(t *testing.T) {
	dir, err := os.MkdirTemp("", "prwait-") // short: a unix socket's path
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	log := slog.New(slog.DiscardHandler)
	srv, err := xds.New(xds.Config{Socket: filepath.Join(dir, "xds.sock"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "xds.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); conn.Close(); <-done })
	repo := policy.NewRepository(policy.Config{})
	if _, err := repo.UpsertEndpoint(policy.Endpoint{ID: 1, Labels: policy.K8sLabels(map[string]string{"app": "a"}, "default")}); err != nil {
		t.Fatal(err)
	}
	p := &policyResources{srv: srv, log: log, ackWait: time.Minute}
	apply := func(addr string) chan error {
		st := &State{Policy: repo.Snapshot()}
		if addr != "" {
			st.Workloads = []Workload{{Endpoint: Endpoint{Name: "a", ID: 1}, Addrs: []netip.Addr{netip.MustParseAddr(addr)}}}
		}
		res := make(chan error, 1)
		go func() { res <- p.Apply(context.Background(), st) }()
		return res
	}

	// Envoy's own ADS stream (state of the world) is up, its module's
	// policy client is not: nobody to wait for (a publish without
	// endpoints).
	ads, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ads.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "n"}, TypeUrl: "type.googleapis.com/envoy.config.listener.v3.Listener"}); err != nil {
		t.Fatal(err)
	}
	for srv.Streams() == 0 {
		time.Sleep(time.Millisecond)
	}
	if err := <-apply(""); err != nil {
		t.Fatalf("Apply with Envoy's ADS stream alone: %v; want no wait", err)
	}

	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{npds.NetworkPolicyType, npds.NetworkPolicyHostsType} {
		if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "n"}, TypeUrl: typ}); err != nil {
			t.Fatal(err)
		}
	}
	// The stand-in proxy hands each response to the test, which answers it.
	responses := make(chan *discovery.DeltaDiscoveryResponse)
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				close(responses)
				return
			}
			responses <- r
		}
	}()
	for srv.PolicyStreams() == 0 {
		time.Sleep(time.Millisecond)
	}
	answer := func(r *discovery.DeltaDiscoveryResponse, nack string) {
		t.Helper()
		req := &discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()}
		if nack != "" {
			req.ErrorDetail = &status.Status{Code: 3, Message: nack}
		}
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
	}

	// The subscriptions' first (empty) responses.
	answer(<-responses, "")
	answer(<-responses, "")

	// A publish of the endpoint: both types are sent; Apply is still
	// waiting when the proxy has them, and returns once it ACKed both.
	res := apply("10.0.0.1")
	got := map[string]*discovery.DeltaDiscoveryResponse{}
	for len(got) < 2 {
		r := <-responses
		got[r.GetTypeUrl()] = r
	}
	select {
	case err := <-res:
		t.Fatalf("Apply returned (%v) before the proxy acknowledged", err)
	default:
	}
	answer(got[npds.NetworkPolicyHostsType], "")
	select {
	case err := <-res:
		t.Fatalf("Apply returned (%v) with the policies not acknowledged", err)
	default:
	}
	answer(got[npds.NetworkPolicyType], "")
	if err := <-res; err != nil {
		t.Fatalf("Apply after both ACKs: %v", err)
	}

	// The endpoint's address moves: only the identity table changes; the
	// proxy rejects it and Apply says so.
	res = apply("10.0.0.2")
	r := <-responses
	if r.GetTypeUrl() != npds.NetworkPolicyHostsType {
		t.Fatalf("an address change sent %s; want the identity table", r.GetTypeUrl())
	}
	answer(r, "no room")
	if err := <-res; err == nil || !strings.Contains(err.Error(), "rejected") || !strings.Contains(err.Error(), "no room") {
		t.Fatalf("Apply after a NACK = %v; want the proxy's rejection", err)
	}
}

package agent

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/wardproxy/ward/policy"
)

// TestEngineSourcesUnion: the config's and Kubernetes' endpoints coexist;
// each source's set changes only its own; an id one source holds already
// is an error of the other's endpoint (in the status), not of the source.
func TestEngineSourcesUnion(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	e, err := newEngine(&Config{Endpoints: []Endpoint{
		{Name: "static", ID: 1, IPs: []string{"10.0.0.1"}, Labels: map[string]string{"app": "static"}},
	}}, log)
	if err != nil {
		t.Fatal(err)
	}
	pods := []Endpoint{
		{Name: "ns/a", ID: 1, IPs: []string{"10.0.1.1"}, Labels: map[string]string{"app": "a"}},
		{Name: "ns/b", ID: 2, IPs: []string{"10.0.1.2"}, Labels: map[string]string{"app": "b"}},
	}
	changed, err := e.setEndpoints(sourceKube, pods, "")
	if !changed {
		t.Error("setEndpoints(kubernetes) changed nothing")
	}
	if err == nil || !strings.Contains(err.Error(), `kubernetes endpoint "ns/a": endpoint id 1 is already taken by config endpoint "static"`) {
		t.Errorf("setEndpoints(kubernetes) error = %v; want the id collision of ns/a", err)
	}
	names := func() string {
		var out []string
		for _, w := range e.workloads() {
			out = append(out, w.Name)
		}
		return strings.Join(out, ",")
	}
	if got := names(); got != "static,ns/b" {
		t.Errorf("workloads = %s; want static,ns/b", got)
	}
	if errs := e.sourceErrors(); len(errs) != 1 || !strings.Contains(errs[0], "ns/a") {
		t.Errorf("sourceErrors() = %q; want the collision", errs)
	}
	// The config source sets its list again (a scan of the directory):
	// Kubernetes' endpoints stay; the collision resolves once the config
	// no longer holds id 1.
	if _, err := e.setEndpoints(sourceConfig, []Endpoint{{Name: "static", ID: 9, IPs: []string{"10.0.0.1"}, Labels: map[string]string{"app": "static"}}}, "endpoints"); err != nil {
		t.Fatal(err)
	}
	if got := names(); got != "static,ns/a,ns/b" {
		t.Errorf("workloads = %s; want static,ns/a,ns/b", got)
	}
	if errs := e.sourceErrors(); len(errs) != 0 {
		t.Errorf("sourceErrors() = %q; want none", errs)
	}
	snap := e.repo.Snapshot()
	for _, id := range []uint64{9, 1, 2} {
		if _, ok := snap.Endpoint(id); !ok {
			t.Errorf("repository has no endpoint %d", id)
		}
	}
	// Kubernetes drops b: only b goes.
	if _, err := e.setEndpoints(sourceKube, pods[:1], ""); err != nil {
		t.Fatal(err)
	}
	if got := names(); got != "static,ns/a" {
		t.Errorf("workloads = %s; want static,ns/a", got)
	}
	if _, ok := e.repo.Snapshot().Endpoint(2); ok {
		t.Error("endpoint 2 still in the repository")
	}
	// An unchanged set changes nothing.
	if changed, _ := e.setEndpoints(sourceKube, pods[:1], ""); changed {
		t.Error("an unchanged set reported a change")
	}
}

// TestEngineNodeSources: the nodes and kube-apiserver addresses of both
// sources make the claims a State carries; node label identities are
// released with the last node holding them.
func TestEngineNodeSources(t *testing.T) {
	e, err := newEngine(&Config{EnableNodeSelectorLabels: true, Nodes: []Node{
		{Name: "static", Addresses: []string{"192.168.0.1"}, Labels: map[string]string{"zone": "a"}},
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := netip.MustParsePrefix
	changed, err := e.setNodes(sourceKube, []Node{{Name: "n2", Addresses: []string{"192.168.0.2"}, Labels: map[string]string{"zone": "b"}}})
	if err != nil || !changed {
		t.Fatalf("setNodes = %v, %v; want true, nil", changed, err)
	}
	if !e.setAPIServer(sourceKube, []netip.Prefix{p("192.168.0.2/32")}) {
		t.Error("setAPIServer changed nothing")
	}
	claims := e.state().Nodes
	zoneB, ok := e.repo.Allocator().LookupLabels(policy.RemoteNodeLabels(map[string]string{"zone": "b"}))
	if !ok {
		t.Fatal("no identity for zone=b")
	}
	if got := claims[p("192.168.0.1/32")]; got == uint32(policy.IdentityRemoteNode) || got == 0 {
		t.Errorf("static node claim = %d; want its own identity", got)
	}
	if got := claims[p("192.168.0.2/32")]; got != uint32(policy.IdentityKubeAPIServer) {
		t.Errorf("n2 (the apiserver too) claim = %d; want kube-apiserver", got)
	}
	e.setAPIServer(sourceKube, nil)
	if got := e.state().Nodes[p("192.168.0.2/32")]; got != uint32(zoneB.ID) {
		t.Errorf("n2 claim = %d; want zone=b's %d", got, zoneB.ID)
	}
	if _, err := e.setNodes(sourceKube, nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.repo.Allocator().LookupLabels(policy.RemoteNodeLabels(map[string]string{"zone": "b"})); ok {
		t.Error("zone=b's identity still allocated after its node went")
	}
	if _, ok := e.state().Nodes[p("192.168.0.1/32")]; !ok {
		t.Error("the config's node lost its claim")
	}
}

// TestEngineServiceSources: services of both sources coexist; a
// namespace/name both define is the later source's error.
func TestEngineServiceSources(t *testing.T) {
	e, err := newEngine(&Config{Services: []Service{{Name: "db", Addresses: []string{"10.1.0.1"}}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !e.setServices(sourceKube, []Service{{Name: "db", Addresses: []string{"10.1.0.2"}}, {Name: "web", Namespace: "x", Selector: map[string]string{"app": "web"}}}) {
		t.Error("setServices changed nothing")
	}
	if got := e.services["default/db"].Prefixes; len(got) != 1 || got[0].String() != "10.1.0.1/32" {
		t.Errorf("default/db = %v; want the config's", got)
	}
	if _, ok := e.services["x/web"]; !ok {
		t.Error("x/web missing")
	}
	if errs := e.sourceErrors(); len(errs) != 1 || !strings.Contains(errs[0], "kubernetes service default/db: already defined by config") {
		t.Errorf("sourceErrors() = %q", errs)
	}
}

// BenchmarkSetEndpointsOneOf5000: a source of 5,000 endpoints (a
// cluster's pods) sets its list again after one pod's label change: only
// that endpoint is parsed and upserted.
func BenchmarkSetEndpointsOneOf5000(b *testing.B) {
	e, err := newEngine(&Config{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	eps := make([]Endpoint, 5000)
	for i := range eps {
		eps[i] = Endpoint{Name: fmt.Sprintf("ns/p%d", i), ID: uint64(1<<31 + i), IPs: []string{fmt.Sprintf("10.100.%d.%d", i/250, i%250+1)}, Namespace: "ns", Remote: true,
			Labels: map[string]string{"app": fmt.Sprintf("a%d", i%1000), "io.cilium.k8s.policy.serviceaccount": "default", "io.cilium.k8s.policy.cluster": "default"}}
	}
	if _, err := e.setEndpoints(sourceKube, eps, ""); err != nil {
		b.Fatal(err)
	}
	labels := []map[string]string{{"app": "x"}, eps[7].Labels}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		eps[7].Labels = labels[i%2]
		if changed, err := e.setEndpoints(sourceKube, eps, ""); err != nil || !changed {
			b.Fatalf("setEndpoints = %v, %v", changed, err)
		}
	}
}

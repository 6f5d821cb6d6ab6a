package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/wardproxy/ward/agent/ipcache"
	"github.com/wardproxy/ward/policy"
)

// flakyIPCache is an ipcache.Writer over a map whose writes of the
// prefixes in fail fail, and which counts the writes made.
type flakyIPCache struct {
	mu     sync.Mutex
	m      map[netip.Prefix]uint32
	fail   map[netip.Prefix]bool
	writes int
}

func (c *flakyIPCache) Upsert(p netip.Prefix, id uint32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
	if c.fail[p] {
		return errors.New("injected failure")
	}
	c.m[p] = id
	return nil
}

func (c *flakyIPCache) Delete(p netip.Prefix) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
	if c.fail[p] {
		return errors.New("injected failure")
	}
	delete(c.m, p)
	return nil
}

func (c *flakyIPCache) get(s string) (uint32, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id, ok := c.m[netip.MustParsePrefix(s)]
	return id, ok
}

func ipcacheTestEngine(t *testing.T) (*engine, *scaleDatapath, *flakyIPCache) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	e, err := newEngine(&Config{Endpoints: ipcacheTestEndpoints("10.0.0.2", "b")}, log)
	if err != nil {
		t.Fatal(err)
	}
	dp := newScaleDatapath()
	w := &flakyIPCache{m: map[netip.Prefix]uint32{}, fail: map[netip.Prefix]bool{}}
	dp.ipc = ipcache.New(w)
	return e, dp, w
}

func ipcacheTestEndpoints(bIP, bApp string) []Endpoint {
	return []Endpoint{
		{Name: "a", ID: 1, IPs: []string{"10.0.0.1"}, Labels: map[string]string{"app": "a"}, Interface: "veth-a"},
		{Name: "b", ID: 2, IPs: []string{bIP}, Labels: map[string]string{"app": bApp}, Interface: "veth-b"},
		{Name: "r", ID: 3, IPs: []string{"10.1.0.1"}, Labels: map[string]string{"app": "a"}, Remote: true},
	}
}

func ipcacheTestPolicy(t *testing.T, e *engine, port, cidr string) {
	t.Helper()
	doc := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "` + port + `", protocol: TCP}]}]
`
	if cidr != "" {
		doc += "  egress:\n  - toCIDR: [" + cidr + "]\n"
	}
	ps, err := policy.Parse("p.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	e.repo.Upsert(ps[0])
}

// TestApplySkipsUnchangedIPCacheSync: a publish whose workloads'
// addresses and identities, node claims and CIDR identities are those of
// the last successful ipcache sync does not sync again (a policy change
// moving no address costs no pass over every address); any change of
// those — an address, an identity, a node claim, a CIDR identity — is
// still written.
func TestApplySkipsUnchangedIPCacheSync(t *testing.T) {
	ctx := context.Background()
	e, dp, w := ipcacheTestEngine(t)
	ipcacheTestPolicy(t, e, "80", "")
	apply := func(nodes map[netip.Prefix]uint32) {
		t.Helper()
		if err := dp.Apply(ctx, &State{Policy: e.repo.Snapshot(), Workloads: e.workloads(), Nodes: nodes}); err != nil {
			t.Fatal(err)
		}
	}
	apply(nil)
	idA, _ := w.get("10.0.0.1/32")
	idB, _ := w.get("10.0.0.2/32")
	if idA == 0 || idB == 0 || idA == idB {
		t.Fatalf("first publish: a %d, b %d", idA, idB)
	}
	if id, _ := w.get("10.1.0.1/32"); id != idA {
		t.Fatalf("remote endpoint r (a's labels): identity %d; want %d", id, idA)
	}
	synced := dp.synced
	if synced == nil {
		t.Fatal("a successful sync was not recorded")
	}

	ipcacheTestPolicy(t, e, "8080", "") // a policy change: no address moves
	apply(nil)
	if dp.synced != synced {
		t.Error("a publish with the same addresses and identities synced the ipcache again")
	}

	// An address change after the unchanged publish is written (and the
	// old address deleted).
	if _, err := e.setEndpoints(sourceConfig, ipcacheTestEndpoints("10.0.0.9", "b"), "endpoints"); err != nil {
		t.Fatal(err)
	}
	apply(nil)
	if id, _ := w.get("10.0.0.9/32"); id != idB {
		t.Errorf("b's new address: identity %d; want %d", id, idB)
	}
	if _, ok := w.get("10.0.0.2/32"); ok {
		t.Error("b's old address is still in the ipcache")
	}

	// An identity change (b's labels) is written.
	if _, err := e.setEndpoints(sourceConfig, ipcacheTestEndpoints("10.0.0.9", "c"), "endpoints"); err != nil {
		t.Fatal(err)
	}
	apply(nil)
	if id, _ := w.get("10.0.0.9/32"); id == idB || id == 0 {
		t.Errorf("b's identity after its labels changed: %d (was %d)", id, idB)
	}

	// A node claim is written, and removed.
	nodes := map[netip.Prefix]uint32{netip.MustParsePrefix("172.16.0.1/32"): uint32(policy.IdentityRemoteNode)}
	apply(nodes)
	if id, _ := w.get("172.16.0.1/32"); id != uint32(policy.IdentityRemoteNode) {
		t.Errorf("node claim: identity %d; want %d", id, policy.IdentityRemoteNode)
	}
	apply(map[netip.Prefix]uint32{netip.MustParsePrefix("172.16.0.2/32"): uint32(policy.IdentityRemoteNode)}) // as many claims
	if id, _ := w.get("172.16.0.2/32"); id != uint32(policy.IdentityRemoteNode) {
		t.Errorf("a node's new address: identity %d; want %d", id, policy.IdentityRemoteNode)
	}
	if _, ok := w.get("172.16.0.1/32"); ok {
		t.Error("a node's old address stayed in the ipcache")
	}
	apply(nil)
	if _, ok := w.get("172.16.0.2/32"); ok {
		t.Error("a node claim gone from the state stayed in the ipcache")
	}

	// A CIDR identity is written, and removed.
	ipcacheTestPolicy(t, e, "8080", "192.0.2.0/24")
	apply(nil)
	if id, _ := w.get("192.0.2.0/24"); id == 0 {
		t.Error("a toCIDR prefix was not written")
	}
	ipcacheTestPolicy(t, e, "8080", "198.51.100.0/24") // as many CIDR identities
	apply(nil)
	if _, ok := w.get("192.0.2.0/24"); ok {
		t.Error("a prefix no rule names any more stayed in the ipcache")
	}
	if id, _ := w.get("198.51.100.0/24"); id == 0 {
		t.Error("a toCIDR prefix replacing another was not written")
	}
	ipcacheTestPolicy(t, e, "8080", "")
	apply(nil)
	if _, ok := w.get("198.51.100.0/24"); ok {
		t.Error("a prefix no rule names any more stayed in the ipcache")
	}

	// And still nothing written by an unchanged publish.
	n := w.writes
	ipcacheTestPolicy(t, e, "80", "")
	apply(nil)
	if w.writes != n {
		t.Errorf("an unchanged publish made %d ipcache writes", w.writes-n)
	}
}

// TestApplyRetriesFailedIPCacheWrite: a failed ipcache write is retried
// by the next publish even though its state is the same — the endpoint
// owner's own (the sync failed) and another owner's (a DNS proxy's FQDN
// claim whose write failed between publishes).
func TestApplyRetriesFailedIPCacheWrite(t *testing.T) {
	ctx := context.Background()
	e, dp, w := ipcacheTestEngine(t)
	ipcacheTestPolicy(t, e, "80", "")
	st := &State{Policy: e.repo.Snapshot(), Workloads: e.workloads()}

	b := netip.MustParsePrefix("10.0.0.2/32")
	w.fail[b] = true
	if err := dp.Apply(ctx, st); err == nil || !strings.Contains(err.Error(), "ipcache") {
		t.Fatalf("a failed ipcache write: Apply returned %v", err)
	}
	if _, ok := w.get("10.0.0.2/32"); ok {
		t.Fatal("the failing writer holds b's address")
	}
	delete(w.fail, b)
	if err := dp.Apply(ctx, st); err != nil { // the same state
		t.Fatal(err)
	}
	if id, _ := w.get("10.0.0.2/32"); id == 0 {
		t.Error("b's address, whose write failed, was not written by the next publish")
	}

	// A write of the FQDN owner fails between two publishes of the same
	// state: the next publish retries it.
	f := netip.MustParsePrefix("198.51.100.7/32")
	w.fail[f] = true
	if err := dp.ipc.Owner(ipcache.FQDN).Upsert(f, 16777217); err == nil {
		t.Fatal("the injected failure did not fail")
	}
	delete(w.fail, f)
	if err := dp.Apply(ctx, st); err != nil {
		t.Fatal(err)
	}
	if id, _ := w.get("198.51.100.7/32"); id != 16777217 {
		t.Errorf("the failed FQDN claim after the next publish: %d; want 16777217", id)
	}

	// Re-failing write of the same state: reported each time, never
	// recorded as synced.
	w.fail[b] = true
	if _, err := e.setEndpoints(sourceConfig, ipcacheTestEndpoints("10.0.0.9", "b"), "endpoints"); err != nil {
		t.Fatal(err)
	}
	st = &State{Policy: e.repo.Snapshot(), Workloads: e.workloads()}
	for i := range 2 {
		if err := dp.Apply(ctx, st); err == nil {
			t.Errorf("publish %d: the failing delete of b's old address was not reported", i)
		}
	}
	if dp.synced != nil {
		t.Error("a failed sync was recorded as done")
	}
}

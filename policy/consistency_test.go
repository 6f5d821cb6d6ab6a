package policy

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"
)

// dump renders every endpoint's policy with remote identities replaced by
// their labels, so that repositories with different allocation orders
// compare equal.
func dump(t *testing.T, r *Repository) string {
	t.Helper()
	snap := r.Snapshot()
	name := func(id NumericIdentity) string {
		if id == IdentityAny {
			return "any"
		}
		i, ok := snap.Identity(id)
		if !ok {
			return fmt.Sprintf("?%d", id)
		}
		return i.Labels.String()
	}
	var b strings.Builder
	for _, ep := range snap.Endpoints() {
		fmt.Fprintf(&b, "endpoint %d %s\n", ep.EndpointID, ep.Labels)
		for _, d := range []Direction{Ingress, Egress} {
			dp := ep.Direction(d)
			fmt.Fprintf(&b, " %s enforced=%v errors=%d\n", d, dp.Enforced, len(dp.Errors))
			var lines []string
			for _, e := range dp.Allow {
				lines = append(lines, fmt.Sprintf("  allow %s %s/%d-%d redirect=%v", name(e.Remote), e.Protocol, e.Port, e.EndPort, e.Redirect))
			}
			for _, e := range dp.Deny {
				lines = append(lines, fmt.Sprintf("  deny %s %s/%d-%d", name(e.Remote), e.Protocol, e.Port, e.EndPort))
			}
			for _, lp := range dp.Proxy {
				for _, s := range lp.Selections {
					var rs []string
					for _, id := range s.Remotes {
						rs = append(rs, name(id))
					}
					sort.Strings(rs)
					lines = append(lines, fmt.Sprintf("  proxy %s/%d %s wildcard=%v all=%v remotes=%v rules=%d", lp.Protocol, lp.Port, lp.Kind, s.Wildcard, s.AllowAll, rs, len(s.Rules.HTTP)+len(s.Rules.Kafka)+len(s.Rules.DNS)))
				}
			}
			sort.Strings(lines)
			for _, l := range lines {
				b.WriteString(l + "\n")
			}
		}
	}
	return b.String()
}

// TestIncrementalMatchesFull applies random changes one by one, resolving
// after each, and compares with a repository built from the final state.
func TestIncrementalMatchesFull(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { incrementalMatchesFull(t, seed) })
	}
}

func incrementalMatchesFull(t *testing.T, seed uint64) {
	apps := []string{"a", "b", "c", "d", "e"}
	nss := []string{"default", "prod"}
	rnd := rand.New(rand.NewPCG(seed, 2))
	pick := func(xs []string) string { return xs[rnd.IntN(len(xs))] }
	mkPolicy := func(i int) *Policy {
		var b strings.Builder
		fmt.Fprintf(&b, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p%d, namespace: %s}\nspec:\n  endpointSelector: {matchLabels: {app: %s}}\n", i, pick(nss), pick(apps))
		switch rnd.IntN(8) {
		case 5:
			fmt.Fprintf(&b, "  ingress:\n  - toPorts: [{ports: [{port: http, protocol: TCP}]}]\n")
		case 6:
			fmt.Fprintf(&b, "  egress:\n  - toServices: [{k8sService: {serviceName: svc%d, namespace: prod}}]\n", rnd.IntN(2))
		case 7:
			fmt.Fprintf(&b, "  egress:\n  - toFQDNs: [{matchPattern: \"*.example%d.com\"}]\n", rnd.IntN(2))
		case 0:
			fmt.Fprintf(&b, "  ingress:\n  - fromEndpoints: [{matchLabels: {app: %s}}]\n    toPorts: [{ports: [{port: \"%d\", protocol: TCP}], rules: {http: [{path: /%d}]}}]\n", pick(apps), 80+rnd.IntN(3), rnd.IntN(3))
		case 1:
			fmt.Fprintf(&b, "  ingress:\n  - fromEndpoints: [{matchLabels: {app: %s}}]\n", pick(apps))
		case 2:
			fmt.Fprintf(&b, "  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: %s}}]\n    toPorts: [{ports: [{port: \"%d\", protocol: TCP}]}]\n", pick(apps), 80+rnd.IntN(3))
		case 3:
			fmt.Fprintf(&b, "  egress:\n  - toEndpoints: [{matchExpressions: [{key: app, operator: In, values: [%s, %s]}]}]\n    toPorts: [{ports: [{port: \"%d\", endPort: %d, protocol: TCP}]}]\n", pick(apps), pick(apps), 80, 80+rnd.IntN(10))
		default:
			n := rnd.IntN(3)
			fmt.Fprintf(&b, "  egress:\n  - toCIDRSet: [{cidr: 10.%d.0.0/16, except: [10.%d.1.0/24]}]\n  - toEntities: [%s]\n", n, n, pick([]string{"world", "cluster", "host"}))
		}
		p, err := ParseOne("r.yaml", []byte(b.String()))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	inc := NewRepository(Config{})
	policies := map[int]*Policy{}
	endpoints := map[uint64]Endpoint{}
	services := map[string]ServiceInfo{}
	fqdns := map[string]bool{}
	for step := 0; step < 300; step++ {
		switch op := rnd.IntN(13); {
		case op == 10:
			svc := ServiceInfo{Name: fmt.Sprintf("svc%d", rnd.IntN(2)), Namespace: "prod", Selector: map[string]string{"app": pick(apps)}}
			services[svc.Name] = svc
			inc.UpsertService(svc)
		case op == 11:
			sel := fmt.Sprintf("matchPattern:*.example%d.com", rnd.IntN(2))
			if !fqdns[sel] {
				if _, err := inc.AllocateFQDN([]string{sel}); err != nil {
					t.Fatal(err)
				}
				fqdns[sel] = true
			}
		case op == 12:
			if id, ok := endpoints[uint64(rnd.IntN(12)+1)]; ok {
				id.NamedPorts = []NamedPort{{Name: "http", Port: uint16(8000 + rnd.IntN(3)), Protocol: ProtocolTCP}}
				endpoints[id.ID] = id
				if _, err := inc.UpsertEndpoint(id); err != nil {
					t.Fatal(err)
				}
			}
		case op < 4:
			i := rnd.IntN(15)
			p := mkPolicy(i)
			if old, ok := policies[i]; ok && old.Key() != p.Key() {
				inc.Delete(old.Key())
			}
			policies[i] = p
			inc.Upsert(p)
		case op < 5:
			i := rnd.IntN(15)
			if old, ok := policies[i]; ok {
				inc.Delete(old.Key())
				delete(policies, i)
			}
		case op < 8:
			ep := Endpoint{ID: uint64(rnd.IntN(12) + 1), Labels: K8sLabels(map[string]string{"app": pick(apps), "v": fmt.Sprint(rnd.IntN(2))}, pick(nss))}
			if old, ok := endpoints[ep.ID]; ok {
				ep.NamedPorts = old.NamedPorts
			}
			endpoints[ep.ID] = ep
			if _, err := inc.UpsertEndpoint(ep); err != nil {
				t.Fatal(err)
			}
		default:
			id := uint64(rnd.IntN(12) + 1)
			delete(endpoints, id)
			inc.DeleteEndpoint(id)
		}
		if rnd.IntN(3) == 0 {
			inc.Snapshot()
		}
	}
	full := NewRepository(Config{})
	for _, svc := range services {
		full.UpsertService(svc)
	}
	for sel := range fqdns {
		if _, err := full.AllocateFQDN([]string{sel}); err != nil {
			t.Fatal(err)
		}
	}
	ids := make([]int, 0, len(policies))
	for i := range policies {
		ids = append(ids, i)
	}
	// The incremental repository orders policies by first insertion; use
	// the same order.
	order := inc.Policies()
	for _, p := range order {
		full.Upsert(p)
	}
	epIDs := make([]uint64, 0, len(endpoints))
	for id := range endpoints {
		epIDs = append(epIDs, id)
	}
	slices.Sort(epIDs)
	for _, id := range epIDs {
		if _, err := full.UpsertEndpoint(endpoints[id]); err != nil {
			t.Fatal(err)
		}
	}
	if len(order) != len(ids) {
		t.Fatalf("incremental has %d policies, want %d", len(order), len(ids))
	}
	got, want := dump(t, inc), dump(t, full)
	if got != want {
		t.Errorf("incremental and full resolution differ:\n--- incremental\n%s\n--- full\n%s", got, want)
	}
}

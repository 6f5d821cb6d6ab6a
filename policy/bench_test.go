package policy

import (
	"fmt"
	"runtime"
	"strings"
	"syscall"
	"testing"
)

// Benchmark scale of issue 3: 10,000 rules over 1,000 identities and
// 5,000 endpoints.
const (
	benchRules      = 10000
	benchIdentities = 1000
	benchEndpoints  = 5000
	rulesPerPolicy  = 5
	benchNamespaces = 10
)

// benchPolicies builds benchRules rules in CNPs of rulesPerPolicy specs:
// each selects one app and allows another app (some in another namespace)
// on a port; every 10th rule has HTTP rules, every 50th a CIDR egress,
// every 100th a deny.
func benchPolicies(tb testing.TB, rev int) []*Policy {
	tb.Helper()
	var out []*Policy
	for p := 0; p < benchRules/rulesPerPolicy; p++ {
		out = append(out, benchPolicy(tb, p, rev))
	}
	return out
}

func benchPolicy(tb testing.TB, p, rev int) *Policy {
	tb.Helper()
	var b strings.Builder
	subj := p % benchIdentities
	ns := subj % benchNamespaces
	fmt.Fprintf(&b, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p%d, namespace: ns%d}\nspecs:\n", p, ns)
	for r := 0; r < rulesPerPolicy; r++ {
		i := p*rulesPerPolicy + r
		peer := (i*7 + rev) % benchIdentities
		fmt.Fprintf(&b, "- endpointSelector: {matchLabels: {app: app%d}}\n", subj)
		switch {
		case i%20 == 0: // L4 only: every peer
			fmt.Fprintf(&b, "  ingress:\n  - toPorts:\n    - ports: [{port: \"%d\", protocol: TCP}]\n", 9000+i%50)
		case i%5 == 0: // a set of 10 apps of one namespace
			var vals []string
			for k := 0; k < 10; k++ {
				vals = append(vals, fmt.Sprintf("app%d", (peer+k*benchNamespaces)%benchIdentities))
			}
			fmt.Fprintf(&b, "  ingress:\n  - fromEndpoints: [{matchExpressions: [{key: app, operator: In, values: [%s]}], matchLabels: {k8s:io.kubernetes.pod.namespace: ns%d}}]\n", strings.Join(vals, ", "), peer%benchNamespaces)
			fmt.Fprintf(&b, "    toPorts:\n    - ports: [{port: \"%d\", endPort: %d, protocol: TCP}]\n", 8000+i%100, 8010+i%100)
		default:
			fmt.Fprintf(&b, "  ingress:\n  - fromEndpoints: [{matchLabels: {app: app%d, k8s:io.kubernetes.pod.namespace: ns%d}}]\n", peer, peer%benchNamespaces)
			fmt.Fprintf(&b, "    toPorts:\n    - ports: [{port: \"%d\", protocol: TCP}]\n", 8000+i%100)
			if i%10 == 1 {
				fmt.Fprintf(&b, "      rules: {http: [{method: GET, path: /api/v%d/.*}]}\n", i%7)
			}
		}
		if i%50 == 1 {
			fmt.Fprintf(&b, "  egress:\n  - toCIDRSet: [{cidr: 10.%d.0.0/16, except: [10.%d.1.0/24]}]\n    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n", i%250, i%250)
		}
		if i%100 == 2 {
			fmt.Fprintf(&b, "  ingressDeny:\n  - fromEntities: [world]\n")
		}
	}
	ps, err := Parse("bench.yaml", []byte(b.String()))
	if err != nil {
		tb.Fatal(err)
	}
	return ps[0]
}

func benchEndpointsList() []Endpoint {
	eps := make([]Endpoint, benchEndpoints)
	for i := range eps {
		app := i % benchIdentities
		eps[i] = Endpoint{ID: uint64(i + 1), Labels: K8sLabels(map[string]string{"app": fmt.Sprintf("app%d", app)}, fmt.Sprintf("ns%d", app%benchNamespaces))}
	}
	return eps
}

func buildRepo(tb testing.TB, ps []*Policy, eps []Endpoint) *Repository {
	r := NewRepository(Config{})
	for _, e := range eps {
		if _, err := r.UpsertEndpoint(e); err != nil {
			tb.Fatal(err)
		}
	}
	for _, p := range ps {
		r.Upsert(p)
	}
	return r
}

// BenchmarkResolveFull: load 10,000 rules and 5,000 endpoints (1,000
// identities) into an empty repository and resolve every endpoint.
func BenchmarkResolveFull(b *testing.B) {
	ps := benchPolicies(b, 0)
	eps := benchEndpointsList()
	b.ReportAllocs()
	var snap *Snapshot
	cpu0 := cpuTime()
	n := 0
	for b.Loop() {
		snap = buildRepo(b, ps, eps).Snapshot()
		n++
	}
	b.StopTimer()
	// CPU time (all threads, GC included) is steadier than wall time on a
	// shared machine.
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(n)/1e6, "cpu-ms/op")
	if n := len(snap.Endpoints()); n != benchEndpoints {
		b.Fatalf("%d endpoints", n)
	}
	entries := 0
	for _, ep := range snap.Endpoints() {
		entries += len(ep.Ingress.Allow) + len(ep.Egress.Allow)
	}
	b.ReportMetric(float64(entries)/benchEndpoints, "entries/endpoint")
}

// BenchmarkIncrementalUpdate: one policy (5 rules) changes in a loaded
// repository; Snapshot recomputes what it affects.
func BenchmarkIncrementalUpdate(b *testing.B) {
	ps := benchPolicies(b, 0)
	r := buildRepo(b, ps, benchEndpointsList())
	r.Snapshot()
	alt := [2]*Policy{benchPolicy(b, 42, 1), ps[42]}
	b.ReportAllocs()
	i := 0
	cpu0 := cpuTime()
	for b.Loop() {
		r.Upsert(alt[i%2])
		r.Snapshot()
		i++
	}
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(i)/1e6, "cpu-ms/op")
}

// cpuTime is the process's user+system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// BenchmarkIncrementalEndpoint: one endpoint with a new identity appears.
func BenchmarkIncrementalEndpoint(b *testing.B) {
	r := buildRepo(b, benchPolicies(b, 0), benchEndpointsList())
	r.Snapshot()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		id := uint64(benchEndpoints + 1 + i%2)
		r.UpsertEndpoint(Endpoint{ID: id, Labels: K8sLabels(map[string]string{"app": "app7", "extra": fmt.Sprint(i % 2)}, "ns7")})
		r.Snapshot()
		r.DeleteEndpoint(id)
		r.Snapshot()
		i++
	}
}

// BenchmarkMemoryPerRule reports the heap a resolved repository retains,
// per rule and in total.
func BenchmarkMemoryPerRule(b *testing.B) {
	ps := benchPolicies(b, 0)
	eps := benchEndpointsList()
	var retained uint64
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		r := buildRepo(b, ps, eps)
		snap := r.Snapshot()
		runtime.GC()
		runtime.ReadMemStats(&after)
		retained = after.HeapAlloc - before.HeapAlloc
		runtime.KeepAlive(r)
		runtime.KeepAlive(snap)
	}
	b.ReportMetric(float64(retained)/benchRules, "B/rule")
	b.ReportMetric(float64(retained)/(1<<20), "MB-retained")
}

// BenchmarkParse: parsing and validating one 5-rule policy.
func BenchmarkParse(b *testing.B) {
	p := benchPolicy(b, 1, 0)
	_ = p
	var sb strings.Builder
	fmt.Fprintf(&sb, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: b}}]\n    toPorts:\n    - ports: [{port: \"80\", protocol: TCP}]\n      rules: {http: [{method: GET, path: /v1/.*}]}\n")
	data := []byte(sb.String())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("b.yaml", data); err != nil {
			b.Fatal(err)
		}
	}
}

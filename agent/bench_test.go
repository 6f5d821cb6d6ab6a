package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wardproxy/ward/agent/ipcache"
	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/xds"
)

// Control-plane scale (issue 17 item 4): a node agent knowing 10,000
// endpoints (5,000 identities: label sets shared by two endpoints, one
// endpoint alone in its own) and 1,000 policies (999 selecting an app of
// ten endpoints and allowing HTTP from the next app and TCP to a third,
// one selecting the lone endpoint). Each iteration changes the lone
// endpoint's policy (its HTTP path and port, so both its BPF entries and
// its Envoy policy change) and publishes through the engine to the
// agent's consumers: the BPF datapath's work without the kernel
// (scaleDatapath below) and the Envoy policy resources (policyResources
// with a real xds.Server, as wardd runs it). Reported per publish: the
// repository's resolve, each consumer and the total, in ms; the Go heap
// in use and the process's RSS (and peak RSS) after the setup.
//
//	go test -run '^$' -bench BenchmarkPolicyChangeOneEndpoint -benchtime 20x ./agent/
func BenchmarkPolicyChangeOneEndpoint(b *testing.B) {
	for _, local := range []int{100, 10000} {
		b.Run(fmt.Sprintf("endpoints=10000/local=%d", local), func(b *testing.B) {
			benchPolicyChange(b, 10000, local, 1000)
		})
	}
}

const scaleLone = "lone" // the shard label of the endpoint the change touches

// scaleEndpoints returns n endpoints, local ones first: endpoint i has the
// labels app=a<shard%apps>, shard=s<shard> with shard i/2, so pairs share
// an identity; the last endpoint has shard "lone" (its own identity) and
// the one before it joins shard 0.
func scaleEndpoints(n, local, apps int) []Endpoint {
	eps := make([]Endpoint, n)
	for i := range eps {
		shard := fmt.Sprintf("s%d", i/2)
		app := fmt.Sprintf("a%d", (i/2)%apps)
		switch i {
		case n - 1:
			shard, app = scaleLone, "lone"
		case n - 2:
			shard, app = "s0", "a0"
		}
		eps[i] = Endpoint{
			Name: fmt.Sprintf("ep%d", i), ID: uint64(i + 1),
			IPs:    []string{netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String()},
			Labels: map[string]string{"app": app, "shard": shard},
			Remote: i >= local && i != n-1, // the changed endpoint is local
		}
		if !eps[i].Remote {
			eps[i].Interface = fmt.Sprintf("veth%d", i)
		}
	}
	return eps
}

func scalePolicy(b *testing.B, name, selector string, from, to string, port int, path string) *policy.Policy {
	b.Helper()
	doc := fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: %s, namespace: default}
spec:
  endpointSelector: {matchLabels: {%s}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: %s}}]
    toPorts:
    - ports: [{port: "%d", protocol: TCP}]
      rules: {http: [{method: GET, path: "%s"}]}
  egress:
  - toEndpoints: [{matchLabels: {app: %s}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
`, name, selector, from, port, path, to)
	p, err := policy.ParseOne(name+".yaml", []byte(doc))
	if err != nil {
		b.Fatal(err)
	}
	return p
}

func benchPolicyChange(b *testing.B, n, local, npol int) {
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	apps := npol - 1
	cfg := &Config{Endpoints: scaleEndpoints(n, local, apps)}
	e, err := newEngine(cfg, log)
	if err != nil {
		b.Fatal(err)
	}
	for k := 0; k < apps; k++ {
		e.repo.Upsert(scalePolicy(b, fmt.Sprintf("p%d", k), fmt.Sprintf("app: a%d", k), fmt.Sprintf("a%d", (k+1)%apps), fmt.Sprintf("a%d", (k+2)%apps), 80, fmt.Sprintf("/v%d/.*", k)))
	}
	lone := func(i int) *policy.Policy {
		return scalePolicy(b, "lone", "shard: "+scaleLone, "a1", "a2", 80+i%2, fmt.Sprintf("/lone/%d", i))
	}
	e.repo.Upsert(lone(0))
	srv, err := xds.New(xds.Config{Socket: filepath.Join(b.TempDir(), "xds.sock"), Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	dp := newScaleDatapath()
	pr := &policyResources{srv: srv, log: log}
	tdp, tpr := &timedConsumer{c: dp}, &timedConsumer{c: pr}
	e.consumers = []Consumer{tdp, tpr}
	e.publish(ctx) // the initial state: every endpoint's entries and policy

	if ids := e.repo.Snapshot().Identities(); len(ids) < 5000 {
		b.Logf("identities: %d", len(ids))
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heap := float64(ms.HeapInuse) / (1 << 20)
	rss, peak := procRSS(b)

	var resolve time.Duration
	tdp.total, tpr.total = 0, 0
	cpu0 := processCPU(b)
	b.ResetTimer()
	for i := 1; i <= b.N; i++ {
		t0 := time.Now()
		e.repo.Upsert(lone(i))
		e.repo.Snapshot() // resolved here; publish reuses it
		resolve += time.Since(t0)
		e.publish(ctx)
	}
	b.StopTimer()
	cpu := processCPU(b) - cpu0
	perOp := func(d time.Duration) float64 { return float64(d) / float64(b.N) / 1e6 }
	// The process's CPU time per change (every thread, GC included): on a
	// loaded shared machine far steadier than the wall-clock columns.
	b.ReportMetric(perOp(cpu), "cpu-ms/op")
	b.ReportMetric(perOp(resolve), "resolve-ms/op")
	b.ReportMetric(perOp(tdp.total), "bpf-ms/op")
	b.ReportMetric(perOp(tpr.total), "envoy-ms/op")
	b.ReportMetric(perOp(resolve+tdp.total+tpr.total), "total-ms/op")
	b.ReportMetric(heap, "heap-MiB")
	b.ReportMetric(rss, "rss-MiB")
	b.ReportMetric(peak, "peak-rss-MiB")
	b.ReportMetric(float64(dp.written)/float64(b.N+1), "policies-written/op")

	// The change must have reached both: the lone endpoint's last entries
	// name the port of the last iteration, and its Envoy policy the path.
	want := uint16(80 + b.N%2)
	found := false
	for _, pe := range dp.policies[uint32(n)] {
		if pe.Port == want {
			found = true
		}
	}
	if !found {
		b.Fatalf("lone endpoint's BPF entries lack port %d: %+v", want, dp.policies[uint32(n)])
	}
	ps, _ := xds.Resources(e.last.Load().Policy, []xds.Workload{{Name: "ep", ID: uint64(n), IPs: nil}})
	if len(ps) != 1 || !strings.Contains(ps[0].String(), fmt.Sprintf("/lone/%d", b.N)) {
		b.Fatalf("lone endpoint's Envoy policy lacks the change: %v", ps)
	}
}

// procRSS returns the test process's resident set and its peak (VmRSS,
// VmHWM) in MiB: the agent's state plus the test binary.
// processCPU returns the CPU time (user + system) the process used so far.
func processCPU(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func procRSS(b *testing.B) (rss, peak float64) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Logf("rss: %v", err)
		return 0, 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var kb float64
		if _, err := fmt.Sscanf(strings.TrimSpace(v), "%f kB", &kb); err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			rss = kb / 1024
		case "VmHWM":
			peak = kb / 1024
		}
	}
	return rss, peak
}

// timedConsumer adds up the time its consumer's Apply takes.
type timedConsumer struct {
	c     Consumer
	total time.Duration
}

func (t *timedConsumer) Apply(ctx context.Context, st *State) error {
	t0 := time.Now()
	err := t.c.Apply(ctx, st)
	t.total += time.Since(t0)
	return err
}

// scaleDatapath is the agent's datapath consumer (datapath.Apply itself)
// over writers without kernel writes: the ipcache owner table over an
// in-memory map, the endpoints' policy-map entries kept in memory where
// the BPF datapath would write them, interfaces that always exist. It
// counts the endpoint policies written.
type scaleDatapath struct {
	*datapath
	policies map[uint32][]redirect.PolicyEntry
	written  int
}

func newScaleDatapath() *scaleDatapath {
	s := &scaleDatapath{policies: map[uint32][]redirect.PolicyEntry{}}
	s.datapath = &datapath{cfg: DatapathConfig{}.withDefaults(), slots: map[uint64]int{}, egress: map[uint64]uint16{}, kafka: map[uint64]uint16{},
		attached: map[uint64]bool{}, epErrs: map[uint64]error{}, applied: map[uint64]appliedEndpoint{},
		w: memPolicies{s}, ifindex: func(string) (int, error) { return 1, nil }}
	s.datapath.ipc = ipcache.New(&memIPCache{m: map[netip.Prefix]uint32{}})
	return s
}

// memPolicies is a policyWriter into scaleDatapath's memory.
type memPolicies struct{ s *scaleDatapath }

func (m memPolicies) SetPolicy(id uint32, entries []redirect.PolicyEntry) error {
	m.s.policies[id] = entries
	m.s.written++
	return nil
}
func (m memPolicies) AddEndpoint(redirect.Endpoint) error { return nil }
func (m memPolicies) RemoveEndpoint(id uint32) error      { delete(m.s.policies, id); return nil }
func (m memPolicies) Lockdown(uint32) error               { return nil }

// memIPCache is an ipcache.Writer over a map.
type memIPCache struct {
	mu sync.Mutex
	m  map[netip.Prefix]uint32
}

func (c *memIPCache) Upsert(p netip.Prefix, id uint32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[p] = id
	return nil
}

func (c *memIPCache) Delete(p netip.Prefix) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, p)
	return nil
}

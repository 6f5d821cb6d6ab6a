package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/wardproxy/ward/agent/kube"
	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

// kubeChurn is the unit-level reproduction of bench/kube's TestKubeScale
// (README, "wardd on Kubernetes at scale") without Kubernetes, Envoy or
// BPF: 5,000 pods (10 local) through the Kubernetes endpoint sink, 1,000
// CiliumNetworkPolicies with an L7 HTTP rule through kube.ParsePolicy into
// the repository (what the CNP source does), the engine publishing to the
// consumers wardd runs that need no kernel or proxy (the regeneration
// marker, the datapath's work over memory, the Envoy policy resources with
// a real xds.Server and its translation cache, the policy status counts),
// the status read after each publish. change(i) applies change i of the
// benchmark: even i edits p0's HTTP path to a new regex, odd i flips the
// remote pod p1001 between app a1 and a label nothing selects.
type kubeChurn struct {
	a    *Agent
	sink *kubeSink
	pr   *policyResources
	pods []kube.Endpoint
}

const (
	churnPods     = 5000
	churnLocal    = 10
	churnPolicies = 1000
)

func churnPolicy(tb testing.TB, i int, path string) *policy.Policy {
	tb.Helper()
	var spec map[string]any
	doc := fmt.Sprintf(`{endpointSelector: {matchLabels: {app: a%d}}, ingress: [{fromEndpoints: [{matchLabels: {app: a%d}}], toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: %q}]}}]}]}`, i, i+1, path)
	if err := yaml.Unmarshal([]byte(doc), &spec); err != nil {
		tb.Fatal(err)
	}
	obj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": map[string]any{"name": fmt.Sprintf("p%d", i), "namespace": "bench", "uid": fmt.Sprintf("uid-p%d", i)}, "spec": spec}}
	obj.SetGeneration(1)
	p, err := kube.ParsePolicy(policy.KindCNP, obj)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func newKubeChurn(tb testing.TB) *kubeChurn {
	tb.Helper()
	c := newKubeChurnBase(tb)
	e, a := c.a.eng, c.a
	for i := range churnPolicies {
		e.repo.Upsert(churnPolicy(tb, i, "/v1/.*"))
	}
	for i := range churnPods {
		ep := kube.Endpoint{Name: fmt.Sprintf("bench/p%d", i), ID: uint64(1<<31 + i), Namespace: "bench", Remote: true,
			IPs:    []string{netip.AddrFrom4([4]byte{10, 100, byte(i / 250), byte(i%250 + 1)}).String()},
			Labels: map[string]string{"app": fmt.Sprintf("a%d", i%churnPolicies), "io.cilium.k8s.policy.serviceaccount": "default", "io.cilium.k8s.policy.cluster": "default"}}
		if i < churnLocal {
			ep.Name, ep.ID, ep.Remote, ep.Interface = fmt.Sprintf("bench/l%d", i), uint64(i+1), false, fmt.Sprintf("lxc%d", i)
		}
		c.pods = append(c.pods, ep)
	}
	c.sink.SetEndpoints(c.pods)
	e.publish(c.sink.ctx) // the first publish: every pod and policy
	c.waitAcked(tb)
	_ = a.Status()
	return c
}

// newKubeChurnBase is the agent without its policies and pods.
func newKubeChurnBase(tb testing.TB) *kubeChurn {
	tb.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	dir, err := os.MkdirTemp("", "churn-") // short: a unix socket's path
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	cfg := Config{Node: "bench-node", StateDir: dir}
	e, err := newEngine(&cfg, log)
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := xds.New(xds.Config{Socket: filepath.Join(dir, "xds.sock"), Logger: log})
	if err != nil {
		tb.Fatal(err)
	}
	a := &Agent{cfg: cfg, log: log, node: cfg.Node, srv: srv, eng: e, regen: &regenerationMarker{}, ready: make(chan struct{})}
	a.newObserve()
	dp := newScaleDatapath()
	pr := &policyResources{srv: srv, log: log, node: e.nodeClaims}
	kp := &kubePolicies{counts: map[policy.Key]int{}}
	status := ConsumerFunc(func(_ context.Context, st *State) error {
		counts := map[policy.Key]int{}
		for _, w := range st.Workloads {
			if w.Remote {
				continue
			}
			if ep, ok := st.Policy.Endpoint(w.ID); ok {
				for _, ref := range policiesOf(ep) {
					counts[ref]++
				}
			}
		}
		kp.mu.Lock()
		kp.counts, kp.rev = counts, st.Policy.Revision
		kp.mu.Unlock()
		return nil
	})
	e.consumers = []Consumer{a.regen, pr, dp, status} // as Run orders them
	c := &kubeChurn{a: a, sink: &kubeSink{a: a, ctx: ctx}, pr: pr}
	c.connectProxy(tb)
	return c
}

func (c *kubeChurn) change(tb testing.TB, i int) {
	tb.Helper()
	if i%2 == 0 {
		c.a.eng.repo.Upsert(churnPolicy(tb, 0, fmt.Sprintf("/v%d/.*", i+2)))
		c.a.eng.publish(c.sink.ctx)
	} else {
		app := "a1"
		if (i/2)%2 == 0 {
			app = "unselected"
		}
		pods := make([]kube.Endpoint, len(c.pods))
		copy(pods, c.pods)
		ls := map[string]string{}
		for k, v := range pods[churnPolicies+1].Labels {
			ls[k] = v
		}
		ls["app"] = app
		pods[churnPolicies+1].Labels = ls
		c.pods = pods
		c.sink.SetEndpoints(pods)
	}
	c.waitAcked(tb)
	_ = c.a.Status()
}

// connectProxy serves xDS and connects a stand-in of the in-Envoy policy
// client (proxylib/npdsclient's protocol: one delta stream for both
// policy types, every response ACKed).
func (c *kubeChurn) connectProxy(tb testing.TB) {
	tb.Helper()
	srv := c.a.srv
	if err := srv.Listen(); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	conn, err := grpc.NewClient("unix://"+c.a.xdsSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cancel(); conn.Close(); <-done })
	for _, typ := range []string{npds.NetworkPolicyType, npds.NetworkPolicyHostsType} {
		if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: c.a.node}, TypeUrl: typ}); err != nil {
			tb.Fatal(err)
		}
	}
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				return
			}
			if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()}); err != nil {
				return
			}
		}
	}()
	for srv.Streams() == 0 {
		time.Sleep(time.Millisecond)
	}
}

// waitAcked waits until the stand-in acknowledged the versions of the last
// publish (as bench/kube waits for Envoy's ACK).
func (c *kubeChurn) waitAcked(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pv, hv := c.pr.versions()
	if err := c.pr.waitAcked(ctx, npds.NetworkPolicyType, pv); err != nil {
		tb.Fatal(err)
	}
	if err := c.pr.waitAcked(ctx, npds.NetworkPolicyHostsType, hv); err != nil {
		tb.Fatal(err)
	}
}

// liveHeap is the live heap after a full collection, in MiB.
func liveHeap() float64 {
	runtime.GC()
	runtime.GC()
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return float64(s[0].Value.Uint64()) / (1 << 20)
}

// TestKubeChurnHeap logs the live heap of the unit-level reproduction at
// 0, 200, 500 and 800 changes and fails when it grows with the changes or
// identities are kept (checkFlat). Opt-in, ~10 s: WARD_CHURN=1;
// WARD_CHURN_PROFILE=dir writes a heap profile at each point (compare
// them with `go tool pprof -diff_base`).
func TestKubeChurnHeap(t *testing.T) {
	if os.Getenv("WARD_CHURN") == "" {
		t.Skip("set WARD_CHURN=1 to run the unit-level churn reproduction")
	}
	c := newKubeChurn(t)
	prof := os.Getenv("WARD_CHURN_PROFILE")
	live := map[int]float64{}
	ids := map[int]int{}
	report := func(n int) {
		h := liveHeap()
		live[n], ids[n] = h, len(c.a.eng.repo.Snapshot().Identities())
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		rss, _ := procRSS(nil)
		t.Logf("changes=%d live=%.1f MiB heapInuse=%.1f MiB heapSys=%.1f MiB released=%.1f MiB rss=%.1f MiB identities=%d",
			n, h, float64(ms.HeapInuse)/(1<<20), float64(ms.HeapSys)/(1<<20), float64(ms.HeapReleased)/(1<<20), rss, len(c.a.eng.repo.Snapshot().Identities()))
		if prof != "" {
			f, err := os.Create(filepath.Join(prof, "heap-"+strconv.Itoa(n)+".pprof"))
			if err != nil {
				t.Fatal(err)
			}
			if err := pprof.WriteHeapProfile(f); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
	}
	report(0)
	for i := range 800 {
		c.change(t, i)
		switch i + 1 {
		case 200, 500, 800:
			report(i + 1)
		}
	}
	checkFlat(t, live, ids)
	c.checkApplied(t)
}

// checkApplied: the last policy edit (change 798, path /v800/.*) reached
// local pod l0's Envoy policy.
func (c *kubeChurn) checkApplied(t *testing.T) {
	t.Helper()
	var ws []xds.Workload
	for _, w := range c.a.eng.workloads() {
		if w.Name == "bench/l0" {
			ws = append(ws, xds.Workload{Name: w.Name, ID: w.ID})
		}
	}
	ps, _ := xds.Resources(c.a.eng.last.Load().Policy, ws)
	if len(ps) != 1 || !strings.Contains(ps[0].String(), "/v800/") {
		t.Errorf("l0's Envoy policy lacks the last edit: %v", ps)
	}
}

// checkFlat fails when the live heap grew with the changes (beyond the
// warm-up of the first 200: more than 2 MiB from 200 to 800, where one
// change allocates about 6 MiB) or identities were kept (the unselected
// label's identity must go with the pod's flip back).
func checkFlat(t *testing.T, live map[int]float64, ids map[int]int) {
	t.Helper()
	if d := live[800] - live[200]; d > 2 {
		t.Errorf("live heap grew %.1f MiB from 200 to 800 changes (%.1f → %.1f MiB): something is retained per change", d, live[200], live[800])
	}
	for _, n := range []int{200, 500, 800} {
		if ids[n] != ids[0] {
			t.Errorf("identities after %d changes = %d; want %d as after the sync", n, ids[n], ids[0])
		}
	}
}

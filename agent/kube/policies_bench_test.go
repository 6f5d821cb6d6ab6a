package kube

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/wardproxy/ward/internal/kubetest"
	"github.com/wardproxy/ward/policy"
)

// notifySink is a repository that reports every upsert.
type notifySink struct {
	*policy.Repository
	upserts chan *policy.Policy
}

func (s *notifySink) Upsert(p *policy.Policy) {
	s.Repository.Upsert(p)
	select {
	case s.upserts <- p:
	default:
	}
}

// BenchmarkPolicySource measures the Kubernetes policy source against the
// real API server with 1,000 CiliumNetworkPolicies: the initial sync (a
// new client's first list parsed into the repository) and, per
// iteration, one policy edited through the API server until its new
// version is in the repository (the API server's write, the watch, ward's
// parser, the repository; the publish to BPF and Envoy after it is
// agent's BenchmarkPolicyChangeOneEndpoint). Reported: initial sync ms,
// change p50/p99 ms, Go heap after the sync.
//
//	go test -run '^$' -bench BenchmarkPolicySource -benchtime 200x ./agent/kube/
func BenchmarkPolicySource(b *testing.B) {
	c := kubetest.Shared(b)
	for _, f := range []string{"ciliumnetworkpolicies.yaml", "ciliumclusterwidenetworkpolicies.yaml"} {
		c.ApplyFile(b, "../../deploy/helm/ward/crds/"+f)
	}
	const ns, n = "bench-policies", 1000
	c.ApplyYAML(b, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n")
	_, dc := c.Clients(b)
	ctx := context.Background()
	spec := func(i, port int) map[string]any {
		var m map[string]any
		doc := fmt.Sprintf(`{endpointSelector: {matchLabels: {app: a%d}}, ingress: [{fromEndpoints: [{matchLabels: {app: a%d}}], toPorts: [{ports: [{port: "%d", protocol: TCP}], rules: {http: [{method: GET, path: "/v%d/.*"}]}}]}]}`, i, i+1, port, i)
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			b.Fatal(err)
		}
		return m
	}
	// Create the policies (8 writers).
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
					"metadata": map[string]any{"name": fmt.Sprintf("p%d", i), "namespace": ns}, "spec": spec(i, 80)}}
				if _, err := dc.Resource(CNPResource).Namespace(ns).Create(ctx, u, metav1.CreateOptions{}); err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = dc.Resource(CNPResource).Namespace(ns).DeleteCollection(context.Background(), metav1.DeleteOptions{}, metav1.ListOptions{})
	})

	cl, err := NewForConfig(c.Config(), Config{}.WithDefaults("bench-node"), slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	if err != nil {
		b.Fatal(err)
	}
	sink := &notifySink{Repository: policy.NewRepository(policy.Config{}), upserts: make(chan *policy.Policy, 1)}
	pols := cl.WatchPolicies(sink, func() {})
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	go func() { _ = cl.Run(rctx) }()
	<-cl.Synced()
	pols.Flush()
	syncMS := float64(time.Since(start).Microseconds()) / 1000
	if got := len(sink.Policies()); got != n {
		b.Fatalf("%d policies after the initial sync, want %d", got, n)
	}
	go func() { _ = pols.Run(rctx) }()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)

	var lat []float64
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		i, port := it%n, 1000+it
		body := fmt.Sprintf(`{"spec":{"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"a%d"}}],"toPorts":[{"ports":[{"port":"%d","protocol":"TCP"}]}]}]}}`, i+1, port)
		for drained := false; !drained; {
			select {
			case <-sink.upserts:
			default:
				drained = true
			}
		}
		t0 := time.Now()
		if _, err := dc.Resource(CNPResource).Namespace(ns).Patch(ctx, fmt.Sprintf("p%d", i), types.MergePatchType, []byte(body), metav1.PatchOptions{}); err != nil {
			b.Fatal(err)
		}
		want := fmt.Sprint(port)
		for done := false; !done; {
			select {
			case p := <-sink.upserts:
				done = p.Metadata.Name == fmt.Sprintf("p%d", i) && string(p.Spec.Ingress[0].ToPorts[0].Ports[0].Port) == want
			case <-time.After(30 * time.Second):
				b.Fatalf("change %d not in the repository after 30s", it)
			}
		}
		lat = append(lat, float64(time.Since(t0).Microseconds())/1000)
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(syncMS, "initial-sync-ms")
	b.ReportMetric(lat[len(lat)/2], "change-p50-ms")
	b.ReportMetric(lat[(len(lat)*99)/100], "change-p99-ms")
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MiB")
}

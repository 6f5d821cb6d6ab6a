package agent

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic/dynamicinformer"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/wardproxy/ward/agent/kube"
	"github.com/wardproxy/ward/policy"
)

func churnCNP(tb testing.TB, i int, path string, gen int64) *unstructured.Unstructured {
	tb.Helper()
	var spec map[string]any
	doc := fmt.Sprintf(`{endpointSelector: {matchLabels: {app: a%d}}, ingress: [{fromEndpoints: [{matchLabels: {app: a%d}}], toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: %q}]}}]}]}`, i, i+1, path)
	if err := yaml.Unmarshal([]byte(doc), &spec); err != nil {
		tb.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": map[string]any{"name": fmt.Sprintf("p%d", i), "namespace": "bench"}, "spec": spec}}
	u.SetUID(types.UID(fmt.Sprintf("uid-p%d", i)))
	u.SetGeneration(gen)
	u.SetResourceVersion(strconv.FormatInt(gen, 10))
	return u
}

// TestKubeChurnHeapInformers is TestKubeChurnHeap through the Kubernetes
// sources themselves (kube.Sources, kube.Policies over fake clients'
// informers) instead of calling the sink and the repository directly.
func TestKubeChurnHeapInformers(t *testing.T) {
	if os.Getenv("WARD_CHURN") == "" {
		t.Skip("set WARD_CHURN=1 to run the unit-level churn reproduction")
	}
	c := newKubeChurnBase(t)
	a := c.a
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var objs []k8sruntime.Object
	for i := range churnPods {
		name, node := fmt.Sprintf("p%d", i), "bench-remote"
		ip := netip.AddrFrom4([4]byte{10, 100, byte(i / 250), byte(i%250 + 1)}).String()
		if i < churnLocal {
			name, node = fmt.Sprintf("l%d", i), "bench-node"
		}
		objs = append(objs, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: name, UID: types.UID("uid-" + name),
			Labels: map[string]string{"app": fmt.Sprintf("a%d", i%churnPolicies)}},
			Spec:   corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "main", Image: "ward.test/none"}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}})
	}
	objs = append(objs, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench"}})
	cs := fake.NewClientset(objs...)
	var cnps []k8sruntime.Object
	for i := range churnPolicies {
		cnps = append(cnps, churnCNP(t, i, "/v1/.*", 1))
	}
	scheme := k8sruntime.NewScheme()
	dc := dynfake.NewSimpleDynamicClientWithCustomListKinds(scheme, map[schema.GroupVersionResource]string{
		kube.CNPResource: "CiliumNetworkPolicyList", kube.CCNPResource: "CiliumClusterwideNetworkPolicyList"}, cnps...)
	kc, err := kube.NewForConfig(&rest.Config{Host: "http://127.0.0.1:1"}, kube.Config{NodeName: "bench-node"}.WithDefaults("bench-node"), a.log)
	if err != nil {
		t.Fatal(err)
	}
	kc.Kube, kc.Dynamic = cs, dc
	kc.Informers = informers.NewSharedInformerFactory(cs, 0)
	kc.DynamicInformers = dynamicinformer.NewDynamicSharedInformerFactory(dc, 0)
	a.kube = kc
	published := make(chan struct{}, 1)
	a.eng.consumers = append(a.eng.consumers, ConsumerFunc(func(context.Context, *State) error {
		select {
		case published <- struct{}{}:
		default:
		}
		return nil
	}))
	src, err := kube.NewSources(kc.Informers, nil, kube.SourcesConfig{NodeName: "bench-node", StateDir: a.cfg.StateDir, Sink: c.sink, Logger: a.log,
		Interface: func(ip netip.Addr) (string, error) { return "lxc-" + ip.String(), nil }})
	if err != nil {
		t.Fatal(err)
	}
	a.kpol = &kubePolicies{counts: map[policy.Key]int{}}
	a.kpol.pols = kc.WatchPolicies(a.eng.repo, func() { a.kubePolicyChanged(ctx) })
	kc.Informers.Start(ctx.Done())
	kc.DynamicInformers.Start(ctx.Done())
	kc.Informers.WaitForCacheSync(ctx.Done())
	kc.DynamicInformers.WaitForCacheSync(ctx.Done())
	done := make(chan struct{}, 2)
	go func() { src.Run(ctx); done <- struct{}{} }()
	<-src.Synced()
	a.kpol.pols.Flush()
	go func() { a.kpol.pols.Run(ctx); done <- struct{}{} }()
	defer func() { cancel(); <-done; <-done }()
	a.eng.publish(ctx)
	<-published
	c.waitAcked(t)
	if n := len(a.eng.workloads()); n != churnPods {
		t.Fatalf("workloads = %d; want %d", n, churnPods)
	}
	if n := len(a.eng.repo.Policies()); n != churnPolicies {
		t.Fatalf("policies = %d; want %d", n, churnPolicies)
	}
	prof := os.Getenv("WARD_CHURN_PROFILE")
	var alloc0 uint64
	live := map[int]float64{}
	ids := map[int]int{}
	report := func(n int) {
		cs.ClearActions() // the fake's record of calls, not the agent's
		dc.ClearActions()
		h := liveHeap()
		live[n], ids[n] = h, len(a.eng.repo.Snapshot().Identities())
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		rss, peak := procRSS(nil)
		perChange := 0.0
		if n > 0 {
			perChange = float64(ms.TotalAlloc-alloc0) / float64(n) / (1 << 20)
		} else {
			alloc0 = ms.TotalAlloc
		}
		t.Logf("changes=%d live=%.1f MiB heapInuse=%.1f MiB heapSys=%.1f MiB released=%.1f MiB rss=%.1f MiB peak-rss=%.1f MiB alloc/change=%.2f MiB gcs=%d identities=%d", n, h,
			float64(ms.HeapInuse)/(1<<20), float64(ms.HeapSys)/(1<<20), float64(ms.HeapReleased)/(1<<20), rss, peak, perChange, ms.NumGC, len(a.eng.repo.Snapshot().Identities()))
		if prof != "" {
			f, err := os.Create(filepath.Join(prof, "kheap-"+strconv.Itoa(n)+".pprof"))
			if err != nil {
				t.Fatal(err)
			}
			pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
	report(0)
	peer := fmt.Sprintf("p%d", churnPolicies+1)
	for i := range 800 {
		select {
		case <-published:
		default:
		}
		if i%2 == 0 {
			if _, err := dc.Resource(kube.CNPResource).Namespace("bench").Update(ctx, churnCNP(t, 0, fmt.Sprintf("/v%d/.*", i+2), int64(i+2)), metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		} else {
			app := "a1"
			if (i/2)%2 == 0 {
				app = "unselected"
			}
			// The fake's tracker keeps resourceVersion as given (the
			// sources re-derive a pod whose resourceVersion changed).
			body := []byte(`{"metadata":{"resourceVersion":"` + strconv.Itoa(i+10) + `","labels":{"app":"` + app + `"}}}`)
			if _, err := cs.CoreV1().Pods("bench").Patch(ctx, peer, types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		select {
		case <-published:
		case <-time.After(time.Minute):
			t.Fatalf("change %d: no publish", i)
		}
		c.waitAcked(t)
		_ = a.Status()
		switch i + 1 {
		case 200, 500, 800:
			report(i + 1)
		}
	}
	checkFlat(t, live, ids)
	c.checkApplied(t)
}

// Package kube benchmarks wardd on Kubernetes (issue 15): a real
// kube-apiserver with 5,000 pods and 1,000 CiliumNetworkPolicies, one
// node's agent (conformance/node, a child process in the node's network
// namespace with the BPF datapath and Envoy, as wardd runs) with 10 local
// pods; the other 4,990 pods are API objects of another node (identities
// in the node's ipcache and Envoy's identity table).
//
// Measured: the initial sync (agent start until its first publish with
// every pod and policy, Envoy ready), the time from one policy edit and
// from one pod label change, written to the API server, until the node
// has written BPF and Envoy has acknowledged the new policy resources
// (NetworkPolicy, NetworkPolicyHosts) — p50/p99 — and the agent's RSS.
//
//	WARD_KUBE_BENCH=1 go test -run TestKubeScale -v -timeout 30m ./bench/kube/
//
// WARD_KUBE_BENCH_PODS, _POLICIES and _CHANGES change the sizes (defaults
// 5000, 1000, 100).
package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/wardproxy/ward/agent/api"
	agentkube "github.com/wardproxy/ward/agent/kube"
	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/internal/kubetest"
	"github.com/wardproxy/ward/internal/testenv"
	"github.com/wardproxy/ward/xds/npds"
)

func TestMain(m *testing.M) {
	node.AgentMain()
	os.Exit(m.Run())
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

const ns = "bench"

func TestKubeScale(t *testing.T) {
	if os.Getenv("WARD_KUBE_BENCH") == "" {
		t.Skip("set WARD_KUBE_BENCH=1 (bench/kube/run.sh) to run the Kubernetes scale benchmark")
	}
	nPods, nPolicies, nChanges := envInt("WARD_KUBE_BENCH_PODS", 5000), envInt("WARD_KUBE_BENCH_POLICIES", 1000), envInt("WARD_KUBE_BENCH_CHANGES", 100)
	const local = 10
	c := kubetest.Start(t)
	cs, dc := c.Clients(t)
	ctx := context.Background()
	for _, crd := range []string{"ciliumnetworkpolicies.yaml", "ciliumclusterwidenetworkpolicies.yaml"} {
		c.ApplyFile(t, filepath.Join(testenv.Root(t), "deploy/helm/ward/crds", crd))
	}
	c.ApplyYAML(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n")

	var specs []node.PodSpec
	for i := range local {
		specs = append(specs, node.PodSpec{Name: fmt.Sprintf("l%d", i), Namespace: ns, Labels: map[string]string{"app": fmt.Sprintf("a%d", i)}, Unmanaged: true})
	}
	n := node.NewWith(t, node.Options{Namespace: true}, specs...)
	nodeName := "bench-node"
	n.Config.Kubernetes = &agentkube.Config{Kubeconfig: forwardAPIServer(t, n.Topo.Host(), c, filepath.Join(n.StateDir, "kubeconfig")), NodeName: nodeName}

	// The objects, 16 writers: policies, then pods (the local ones with
	// their namespaces' IPs, the others on another node).
	parallel(t, nPolicies, func(i int) error {
		_, err := dc.Resource(agentkube.CNPResource).Namespace(ns).Create(ctx, policyObject(t, i, "/v1/.*"), metav1.CreateOptions{})
		return err
	})
	parallel(t, nPods, func(i int) error {
		name, node, ip := fmt.Sprintf("p%d", i), "bench-remote", netip.AddrFrom4([4]byte{10, 100, byte(i / 250), byte(i%250 + 1)})
		labels := map[string]string{"app": fmt.Sprintf("a%d", i%nPolicies)}
		if i < local {
			name, node, ip = specs[i].Name, nodeName, n.Pods[specs[i].Name].IP
		}
		return createPod(ctx, cs, name, node, ip, labels)
	})
	t.Logf("created %d policies and %d pods", nPolicies, nPods)

	start := time.Now()
	n.Start(t, 47000, 9470)
	sync := time.Since(start)
	st := status(t, n)
	if st.Kubernetes == nil || st.Kubernetes.Pods != nPods || st.Kubernetes.LocalPods != local {
		t.Fatalf("after the first publish: kubernetes status %+v; want %d pods, %d local", st.Kubernetes, nPods, local)
	}
	pid := agentPID(t, n)
	rssSync := rss(t, pid)

	// A policy edit: p0 selects the local pod l0 (app a0); its HTTP path
	// alternates.
	policyChange := measure(t, n, nChanges, npds.NetworkPolicyType, func(i int) {
		body, err := json.Marshal(map[string]any{"spec": policyObject(t, 0, fmt.Sprintf("/v%d/.*", i+2)).Object["spec"]})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dc.Resource(agentkube.CNPResource).Namespace(ns).Patch(ctx, "p0", types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	})
	// A pod label change: the remote pod p1001 (app a1, the peer p0
	// allows) alternates between a1 and a label nothing selects.
	peer := "p" + strconv.Itoa(nPolicies+1)
	labelChange := measure(t, n, nChanges, npds.NetworkPolicyHostsType, func(i int) {
		app := "a1"
		if i%2 == 0 {
			app = "unselected"
		}
		body := []byte(`{"metadata":{"labels":{"app":"` + app + `"}}}`)
		if _, err := cs.CoreV1().Pods(ns).Patch(ctx, peer, types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	})
	rssEnd := rss(t, pid)
	report := fmt.Sprintf(`# bench/kube: wardd with %d pods and %d CiliumNetworkPolicies (real kube-apiserver)

| measure | value | target |
|---|---|---|
| initial sync (agent start → first publish with every pod and policy, Envoy ready) | %s | < 10 s |
| policy edit → BPF written and Envoy acked (p50 / p99, %d edits) | %s / %s | p99 < 100 ms |
| pod label change → BPF written and Envoy acked (p50 / p99, %d changes) | %s / %s | p99 < 100 ms |
| wardd RSS after sync / after the changes | %.0f / %.0f MiB | < 300 MiB |
`, nPods, nPolicies, ms(sync), len(policyChange), ms(pct(policyChange, 50)), ms(pct(policyChange, 99)),
		len(labelChange), ms(pct(labelChange, 50)), ms(pct(labelChange, 99)), rssSync, rssEnd)
	t.Log("\n" + report)
	if out := os.Getenv("WARD_KUBE_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(report), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// measure runs change nChanges times; each time it waits until the node's
// Envoy has acknowledged a new version of typ and every resource of it
// is applied (the datapath consumer wrote BPF before the proxy's
// resources were published), and returns the durations.
func measure(t *testing.T, n *node.Node, nChanges int, typ string, change func(i int)) []time.Duration {
	t.Helper()
	var out []time.Duration
	for i := range nChanges {
		before := status(t, n).Acked[typ]
		t0 := time.Now()
		change(i)
		for {
			st := status(t, n)
			if v := st.Acked[typ]; v != before && len(st.Delivery[typ].NotApplied) == 0 {
				break
			}
			if time.Since(t0) > 30*time.Second {
				t.Fatalf("change %d: %s not acknowledged after 30s", i, typ)
			}
			// Each status read costs the agent CPU (it lists every policy
			// object's state): polled every 5 ms, the measure is up to
			// 5 ms late rather than the agent slowed by its observer.
			time.Sleep(5 * time.Millisecond)
		}
		out = append(out, time.Since(t0))
	}
	return out
}

func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	if i > 0 {
		i--
	}
	return s[i]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

// policyObject is CNP p<i>: pods app a<i> accept GET path from app a<i+1>
// on port 80.
func policyObject(t *testing.T, i int, path string) *unstructured.Unstructured {
	t.Helper()
	var spec map[string]any
	doc := fmt.Sprintf(`{endpointSelector: {matchLabels: {app: a%d}}, ingress: [{fromEndpoints: [{matchLabels: {app: a%d}}], toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: %q}]}}]}]}`, i, i+1, path)
	if err := yaml.Unmarshal([]byte(doc), &spec); err != nil {
		t.Fatal(err)
	}
	return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": map[string]any{"name": fmt.Sprintf("p%d", i), "namespace": ns}, "spec": spec}}
}

func createPod(ctx context.Context, cs kubernetes.Interface, name, nodeName string, ip netip.Addr, labels map[string]string) error {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "main", Image: "ward.test/none"}}}}
	created, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	created.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}}}
	_, err = cs.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{})
	return err
}

// parallel runs f(0..n-1) on 16 writers.
func parallel(t *testing.T, n int, f func(i int) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 16 {
				if err := f(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// status reads the agent's status from its socket.
func status(t *testing.T, n *node.Node) api.Status {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(n.StateDir, api.Socket))
	}}}
	resp, err := hc.Get("http://wardd" + api.StatusPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st api.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// agentPID finds the node's agent process (the test binary run by
// node.Start with the node's config in its environment).
func agentPID(t *testing.T, n *node.Node) int {
	t.Helper()
	want := "WARD_NODE_AGENT_CONFIG=" + filepath.Join(n.StateDir, "node-agent.json")
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err == nil && slices.Contains(strings.Split(string(b), "\x00"), want) {
			return pid
		}
	}
	t.Fatal("agent process not found")
	return 0
}

// rss is a process's resident set in MiB.
func rss(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return float64(kb) / 1024
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// forwardAPIServer makes the API server reachable from the node's
// namespace (its loopback) and writes a kubeconfig naming that address
// (as conformance/kube does).
func forwardAPIServer(t *testing.T, ns *netns.Namespace, c *kubetest.Cluster, path string) string {
	t.Helper()
	ln, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := strings.TrimPrefix(c.Host(), "https://")
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); _, _ = io.Copy(out, in) }()
			go func() { defer wg.Done(); _, _ = io.Copy(in, out) }()
		}
	}()
	cfg, err := clientcmd.LoadFromFile(c.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range cfg.Clusters {
		cl.Server = "https://" + ln.Addr().String()
	}
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

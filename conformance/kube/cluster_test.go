package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/wardproxy/ward/agent/api"
	agentkube "github.com/wardproxy/ward/agent/kube"
	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/internal/kubetest"
	"github.com/wardproxy/ward/internal/testenv"
)

// A cluster of nodes on one real kube-apiserver: each node is a network
// namespace with its own agent (conformance/node, a child process in the
// node's namespace), whose node config has a kubernetes block and no
// endpoints: its pods, the other nodes' pods, the Node objects and the
// services all come from the API server. The test plays the kubelet: it
// creates each pod as an API object bound to its node (spec.nodeName)
// and, once the pod's network namespace exists, writes its IP and phase
// Running through the status subresource.
//
// The API server listens on the test's loopback; each node reaches it
// through a forwarder listening on the node namespace's loopback.

// underlayNet is the underlay's subnet (inside the test's namespaces).
var underlayNet = netip.MustParsePrefix("172.30.0.0/24")

type kcluster struct {
	// t is the test that built the cluster: objects are deleted at its
	// end, whatever subtest made them.
	t     *testing.T
	api   *kubetest.Cluster
	cs    kubernetes.Interface
	dc    dynamic.Interface
	nodes []*knode
	// policies are the CNP/CCNP objects setPolicies applied last.
	policies []*unstructured.Unstructured
}

type knode struct {
	*node.Node
	name string     // the Node object's name
	addr netip.Addr // on the underlay
}

// newKubeCluster builds one node per pod list (the pods' network
// namespaces; their API objects come with createPods), wires them on an
// underlay, creates their Node objects and configures each agent with
// the kubernetes block. Node names are prefix-0, prefix-1, ...
func newKubeCluster(t *testing.T, prefix string, pods ...[]node.PodSpec) *kcluster {
	t.Helper()
	api := kubetest.Shared(t)
	cs, dc := api.Clients(t)
	// ward's cilium.io/v2 CRDs: the agents watch CiliumNetworkPolicies.
	for _, crd := range []string{"ciliumnetworkpolicies.yaml", "ciliumclusterwidenetworkpolicies.yaml"} {
		api.ApplyFile(t, filepath.Join(testenv.Root(t), "deploy/helm/ward/crds", crd))
	}
	c := &kcluster{t: t, api: api, cs: cs, dc: dc}
	for i, specs := range pods {
		for j := range specs {
			// Endpoints come from the API server, not the node config.
			specs[j].Unmanaged = true
		}
		n := node.NewWith(t, node.Options{Namespace: true, Routes: []netip.Prefix{underlayNet}}, specs...)
		c.nodes = append(c.nodes, &knode{Node: n, name: fmt.Sprintf("%s-%d", prefix, i), addr: netip.AddrFrom4([4]byte{172, 30, 0, byte(i + 1)})})
	}
	under := c.nodes[0].Topo.NewNamespace(t, "kunder")
	for i, n := range c.nodes {
		if _, err := netns.Connect(n.Topo.Host(), under, fmt.Sprintf("k%d", i), netip.PrefixFrom(n.addr, 24)); err != nil {
			t.Fatal(err)
		}
		n.Config.Datapath.Devices = []string{"eth0"}
	}
	for i, n := range c.nodes {
		for j, m := range c.nodes {
			if i != j {
				if err := n.Topo.Host().IP("route", "add", m.Topo.Subnet.String(), "via", m.addr.String()); err != nil {
					t.Fatal(err)
				}
			}
		}
		kubeconfig := forwardAPIServer(t, n.Topo.Host(), api, filepath.Join(n.StateDir, "kubeconfig"))
		n.Config.Kubernetes = &agentkube.Config{Kubeconfig: kubeconfig, NodeName: n.name}
		n.Config.EnableNodeSelectorLabels = true
		c.createNode(t, n)
	}
	return c
}

// createNode creates (or replaces) the node's Node object with its
// underlay address.
func (c *kcluster) createNode(t *testing.T, n *knode) {
	t.Helper()
	ctx := context.Background()
	obj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: map[string]string{"ward.test/node": n.name}}}
	_ = c.cs.CoreV1().Nodes().Delete(ctx, n.name, metav1.DeleteOptions{})
	created, err := c.cs.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.addr.String()}}
	if _, err := c.cs.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.t.Cleanup(func() { _ = c.cs.CoreV1().Nodes().Delete(context.Background(), n.name, metav1.DeleteOptions{}) })
}

// namespace creates a namespace with labels (deleted at the test's end).
func (c *kcluster) namespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	c.t.Cleanup(func() { _ = c.cs.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

// labelNamespace replaces a namespace's labels.
func (c *kcluster) labelNamespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	ns, err := c.cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Labels = labels
	if _, err := c.cs.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// podOpts are the parts of a pod's API object the PodSpec does not hold.
type podOpts struct {
	serviceAccount string
}

// createPod creates the API object of a pod of node n (its namespace and
// labels from its spec), then plays the kubelet: status.podIP(s) and
// phase Running.
func (c *kcluster) createPod(t *testing.T, n *knode, name string, o podOpts) {
	t.Helper()
	ctx := context.Background()
	var spec node.PodSpec
	for _, s := range n.Specs {
		if s.Name == name {
			spec = s
		}
	}
	ns := spec.Namespace
	if ns == "" {
		ns = "default"
	}
	ctr := corev1.Container{Name: "main", Image: "ward.test/none"}
	for _, p := range spec.Ports {
		ctr.Ports = append(ctr.Ports, corev1.ContainerPort{Name: p.Name, ContainerPort: int32(p.Port), Protocol: corev1.Protocol(cmpOr(p.Protocol, "TCP"))})
	}
	obj := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: spec.Labels},
		Spec: corev1.PodSpec{NodeName: n.name, ServiceAccountName: o.serviceAccount, Containers: []corev1.Container{ctr}}}
	created, err := c.cs.CoreV1().Pods(ns).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ip := n.Pods[name].IP.String()
	created.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
	if _, err := c.cs.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.t.Cleanup(func() {
		_ = c.cs.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	})
}

// deletePod deletes a pod's API object (no grace: there is no kubelet
// to confirm it) and its network namespace.
func (c *kcluster) deletePod(t *testing.T, n *knode, ns, name string) {
	t.Helper()
	if err := c.cs.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	if err := n.Topo.Remove(name); err != nil {
		t.Fatal(err)
	}
	delete(n.Pods, name)
}

// recreatePod gives a deleted pod a new network namespace (a new IP) and
// creates its API object again.
func (c *kcluster) recreatePod(t *testing.T, n *knode, name string, o podOpts) {
	t.Helper()
	var labels map[string]string
	for _, s := range n.Specs {
		if s.Name == name {
			labels = s.Labels
		}
	}
	n.Pods[name] = n.Topo.AddPod(t, netns.PodConfig{Name: name, Labels: labels, Routes: []netip.Prefix{underlayNet}})
	c.createPod(t, n, name, o)
}

// setPolicies makes the cluster's ward test policies the CNP/CCNP
// objects of yamlDocs, as `kubectl apply` of a file and `kubectl delete`
// of the previous one: server-side applied, then the objects the previous
// call applied and this one does not name deleted. Every agent takes them
// from the API server.
func (c *kcluster) setPolicies(t *testing.T, yamlDocs string) {
	t.Helper()
	ctx := context.Background()
	objs, err := kubetest.Decode([]byte(yamlDocs))
	if err != nil {
		t.Fatal(err)
	}
	key := func(o *unstructured.Unstructured) string {
		return o.GetKind() + "/" + o.GetNamespace() + "/" + o.GetName()
	}
	keep := map[string]bool{}
	for _, o := range objs {
		keep[key(o)] = true
	}
	if _, err := c.api.Apply(ctx, []byte(yamlDocs), kubetest.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, o := range c.policies {
		if !keep[key(o)] {
			c.deletePolicy(t, o)
		}
	}
	if len(c.policies) == 0 {
		c.t.Cleanup(func() {
			for _, o := range c.policies {
				c.deletePolicy(c.t, o)
			}
		})
	}
	c.policies = objs
}

func (c *kcluster) deletePolicy(t *testing.T, o *unstructured.Unstructured) {
	t.Helper()
	var ri dynamic.ResourceInterface = c.dc.Resource(agentkube.CNPResource).Namespace(o.GetNamespace())
	if o.GetKind() == "CiliumClusterwideNetworkPolicy" {
		ri = c.dc.Resource(agentkube.CCNPResource)
	}
	if err := ri.Delete(context.Background(), o.GetName(), metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete %s %s: %v", o.GetKind(), o.GetName(), err)
	}
}

// status reads the node agent's status from its status socket (the
// agent is a child process in the node's namespace).
func (n *knode) status(t *testing.T) api.Status {
	t.Helper()
	var st api.Status
	n.get(t, api.StatusPath, &st)
	return st
}

// ipcache reads the node agent's ipcache (prefix -> identity).
func (n *knode) ipcache(t *testing.T) map[string]uint32 {
	t.Helper()
	var es []api.IPCacheEntry
	n.get(t, api.IPCachePath, &es)
	out := map[string]uint32{}
	for _, e := range es {
		out[e.Prefix] = e.Identity
	}
	return out
}

// get GETs path from the agent's status socket into v.
func (n *knode) get(t *testing.T, path string, v any) {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(n.StateDir, api.Socket))
	}}}
	resp, err := hc.Get("http://wardd" + path)
	if err != nil {
		t.Fatalf("%s of %s: %v", path, n.name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s of %s: %s", path, n.name, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("%s of %s: %v", path, n.name, err)
	}
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// forwardAPIServer makes the API server reachable from inside a node's
// namespace (its loopback) and writes a kubeconfig naming that address.
func forwardAPIServer(t *testing.T, ns *netns.Namespace, api *kubetest.Cluster, path string) string {
	t.Helper()
	ln, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := strings.TrimPrefix(api.Host(), "https://")
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
			go func() { defer wg.Done(); _, _ = io.Copy(out, in); closeWrite(out) }()
			go func() { defer wg.Done(); _, _ = io.Copy(in, out); closeWrite(in) }()
		}
	}()
	cfg, err := clientcmd.LoadFromFile(api.Kubeconfig())
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

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

package kube

import (
	"context"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/conformance/servers/deathstar"
	"github.com/wardproxy/ward/internal/testenv"
)

// The namespace of TestTwoNodes' Star Wars pods, and another one.
const (
	swNS    = "k2-starwars"
	otherNS = "k2-rebels"
)

// TestTwoNodes is the seed's Star Wars demo on two nodes driven by a real
// kube-apiserver: tiefighter and xwing on node 0, the Death Star on node
// 1, all three created as pods through the API (the test writes their
// IPs as the kubelet would); the agents take policies (CNP and CCNP
// objects, server-side applied), pods, namespaces, services and nodes
// from the API server and have no endpoint or policy in their config.
// Then, on the same cluster: a namespace-isolation clusterwide policy, a
// service-account policy, toServices, pod churn (tiefighter deleted and
// recreated with another IP keeps its identity on the other node) and a
// namespace label change that flips a policy selecting namespace labels.
func TestTwoNodes(t *testing.T) {
	c := newKubeCluster(t, "k2-two",
		[]node.PodSpec{
			{Name: "tiefighter", Namespace: swNS, Labels: map[string]string{"org": "empire", "class": "tiefighter"}},
			{Name: "xwing", Namespace: swNS, Labels: map[string]string{"org": "alliance", "class": "xwing"}},
			{Name: "rebel", Namespace: otherNS, Labels: map[string]string{"org": "empire", "class": "spy"}},
		},
		[]node.PodSpec{{Name: "deathstar", Namespace: swNS, Labels: map[string]string{"org": "empire", "class": "deathstar"},
			Ports: []agent.ContainerPort{{Name: "http", Port: 80}}}},
	)
	a, b := c.nodes[0], c.nodes[1]
	c.namespace(t, swNS, nil)
	c.namespace(t, otherNS, nil)
	c.createPod(t, a, "tiefighter", podOpts{serviceAccount: "tiefighter"})
	c.createPod(t, a, "xwing", podOpts{serviceAccount: "xwing"})
	c.createPod(t, a, "rebel", podOpts{})
	c.createPod(t, b, "deathstar", podOpts{serviceAccount: "deathstar"})
	ctx := context.Background()
	if _, err := c.cs.CoreV1().Services(swNS).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "deathstar"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"class": "deathstar"}, Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.cs.CoreV1().Services(swNS).Delete(context.Background(), "deathstar", metav1.DeleteOptions{})
	})
	b.Serve(t, "deathstar", deathstar.New(), ":80")
	// xwing serves too: a flow to it that a policy drops is told apart
	// from a refused one.
	a.Serve(t, "xwing", deathstar.New(), ":80")
	pol, err := os.ReadFile(filepath.Join(testenv.Root(t), "examples/deathstar/l7/sw_l3_l4_l7_policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// The seed's CNP, applied in the pods' namespace.
	sw := strings.Replace(string(pol), "  name: \"rule1\"\n", "  name: \"rule1\"\n  namespace: "+swNS+"\n", 1)
	a.Start(t, 46000, 9460)
	b.Start(t, 46100, 9461)
	c.setPolicies(t, sw)

	cctx, stop := context.WithTimeout(ctx, 4*time.Minute)
	defer stop()
	curlFrom := func(n *knode, pod, method, path string) string {
		return n.Curl(cctx, pod, "-X", method, "-w", " %{http_code}", "http://"+b.Pods["deathstar"].IP.String()+path)
	}
	curl := func(pod, method, path string) string { return curlFrom(a, pod, method, path) }
	starWars := func(t *testing.T, what string) {
		t.Helper()
		node.Eventually(t, what+": node 1's Envoy to deny tiefighter's PUT", func() bool {
			return curl("tiefighter", "PUT", "/v1/exhaust-port") == "Access denied 403"
		})
		if got := curl("tiefighter", "POST", "/v1/request-landing"); got != "Ship landed 200" {
			t.Errorf("%s: tiefighter POST = %q; want Ship landed 200", what, got)
		}
		if got := curl("xwing", "POST", "/v1/request-landing"); got != "error" {
			t.Errorf("%s: xwing POST = %q; want dropped", what, got)
		}
	}
	t.Run("star wars L7 across nodes", func(t *testing.T) {
		starWars(t, "star wars")
		// The rebel's pod in another namespace has org=empire too, but a
		// namespaced policy selects its own namespace only.
		if got := curl("rebel", "POST", "/v1/request-landing"); got != "error" {
			t.Errorf("rebel (other namespace) POST = %q; want dropped", got)
		}
	})

	t.Run("pod churn", func(t *testing.T) {
		old := a.Pods["tiefighter"].IP
		c.deletePod(t, a, swNS, "tiefighter")
		c.recreatePod(t, a, "tiefighter", podOpts{serviceAccount: "tiefighter"})
		if a.Pods["tiefighter"].IP == old {
			t.Fatalf("recreated tiefighter kept IP %s", old)
		}
		// Both nodes' ipcaches: the new address has tiefighter's identity,
		// the old one is gone. Node 2 learns it from the API server on its
		// own time; node 1, once it redirects the new pod's traffic to its
		// Envoy, answers it as tiefighter's at once (its Envoy learnt the
		// address before its datapath did).
		for _, n := range c.nodes {
			node.Eventually(t, "the old address to leave node "+n.name+"'s ipcache", func() bool {
				ipc := n.ipcache(t)
				_, old := ipc[old.String()+"/32"]
				return !old && ipc[a.Pods["tiefighter"].IP.String()+"/32"] != 0
			})
		}
		starWars(t, "after tiefighter's churn")
	})

	t.Run("pod lifecycle", func(t *testing.T) {
		// A pod without an IP is no endpoint (a status note); with its
		// IP but before its interface exists it waits for it (status);
		// once the interface is there its policy applies.
		obj := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "tiefighter2", Namespace: swNS, Labels: map[string]string{"org": "empire", "class": "tiefighter"}},
			Spec: corev1.PodSpec{NodeName: a.name, Containers: []corev1.Container{{Name: "main", Image: "ward.test/none"}}}}
		created, err := c.cs.CoreV1().Pods(swNS).Create(ctx, obj, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		c.t.Cleanup(func() {
			_ = c.cs.CoreV1().Pods(swNS).Delete(context.Background(), "tiefighter2", metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		})
		notes := func() string { return strings.Join(a.status(t).Kubernetes.Notes, "; ") }
		node.Eventually(t, "a note for the pod without an IP", func() bool {
			return strings.Contains(notes(), "without an IP yet are not endpoints: "+swNS+"/tiefighter2")
		})
		// The kubelet's IP before the pod's network namespace exists: the
		// address the topology gives the next pod.
		next := a.Pods["xwing"].IP.Next()
		for _, p := range a.Pods {
			if next.Less(p.IP) || next == p.IP {
				next = p.IP.Next()
			}
		}
		created.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: next.String(), PodIPs: []corev1.PodIP{{IP: next.String()}}}
		if _, err := c.cs.CoreV1().Pods(swNS).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		node.Eventually(t, "the pod to wait for its interface", func() bool {
			for _, e := range a.status(t).Endpoints {
				if e.Name == swNS+"/tiefighter2" {
					return e.State == "waiting-for-interface"
				}
			}
			return false
		})
		if n := notes(); !strings.Contains(n, "wait for their interface") || strings.Contains(n, "without an IP") {
			t.Errorf("notes = %q; want the pod waiting for its interface, none without an IP", n)
		}
		a.Pods["tiefighter2"] = a.Topo.AddPod(t, netns.PodConfig{Name: "tiefighter2", Routes: []netip.Prefix{underlayNet}})
		if got := a.Pods["tiefighter2"].IP; got != next {
			t.Fatalf("tiefighter2's namespace got %s; the API object says %s", got, next)
		}
		node.Eventually(t, "tiefighter2's endpoint to be attached once its interface exists", func() bool {
			for _, e := range a.status(t).Endpoints {
				if e.Name == swNS+"/tiefighter2" {
					return e.State == "ready"
				}
			}
			return false
		})
		if n := notes(); n != "" {
			t.Errorf("notes = %q; want none", n)
		}
		node.Eventually(t, "tiefighter2's PUT to be denied", func() bool {
			return curl("tiefighter2", "PUT", "/v1/exhaust-port") == "Access denied 403"
		})
		if got := curl("tiefighter2", "POST", "/v1/request-landing"); got != "Ship landed 200" {
			t.Errorf("tiefighter2 POST = %q; want Ship landed 200", got)
		}
	})

	t.Run("service account", func(t *testing.T) {
		c.setPolicies(t, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1, namespace: `+swNS+`}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints:
    - matchLabels: {io.cilium.k8s.policy.serviceaccount: xwing}
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`)
		node.Eventually(t, "xwing's service account to be allowed", func() bool {
			return curl("xwing", "POST", "/v1/request-landing") == "Ship landed 200"
		})
		if got := curl("tiefighter", "POST", "/v1/request-landing"); got != "error" {
			t.Errorf("tiefighter (another service account) POST = %q; want dropped", got)
		}
	})

	t.Run("namespace labels flip a clusterwide policy", func(t *testing.T) {
		c.setPolicies(t, `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: k2-landing-by-namespace}
spec:
  endpointSelector: {matchLabels: {class: deathstar, k8s:io.kubernetes.pod.namespace: `+swNS+`}}
  ingress:
  - fromEndpoints:
    - matchLabels: {k8s:io.cilium.k8s.namespace.labels.clearance: granted}
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`)
		node.Eventually(t, "the policy to drop rebel (its namespace not cleared)", func() bool {
			return curl("rebel", "POST", "/v1/request-landing") == "error" && curl("tiefighter", "POST", "/v1/request-landing") == "error"
		})
		c.labelNamespace(t, otherNS, map[string]string{"clearance": "granted"})
		node.Eventually(t, "rebel's namespace label to allow it", func() bool {
			return curl("rebel", "POST", "/v1/request-landing") == "Ship landed 200"
		})
		if got := curl("tiefighter", "POST", "/v1/request-landing"); got != "error" {
			t.Errorf("tiefighter (namespace not cleared) POST = %q; want dropped", got)
		}
		c.labelNamespace(t, otherNS, nil)
		node.Eventually(t, "the label's removal to drop rebel again", func() bool {
			return curl("rebel", "POST", "/v1/request-landing") == "error"
		})
	})

	t.Run("namespace isolation", func(t *testing.T) {
		// The seed's namespace isolation as a clusterwide policy: every
		// pod of the namespace accepts only its own namespace.
		c.setPolicies(t, `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: k2-isolate}
spec:
  endpointSelector: {matchLabels: {k8s:io.kubernetes.pod.namespace: `+swNS+`}}
  ingress:
  - fromEndpoints:
    - matchLabels: {k8s:io.kubernetes.pod.namespace: `+swNS+`}
`)
		node.Eventually(t, "tiefighter (same namespace) to be allowed", func() bool {
			return curl("tiefighter", "POST", "/v1/request-landing") == "Ship landed 200"
		})
		if got := curl("xwing", "POST", "/v1/request-landing"); got != "Ship landed 200" {
			t.Errorf("xwing (same namespace) POST = %q; want Ship landed 200", got)
		}
		if got := curl("rebel", "POST", "/v1/request-landing"); got != "error" {
			t.Errorf("rebel (other namespace) POST = %q; want dropped", got)
		}
	})

	t.Run("fromNodes by Node labels", func(t *testing.T) {
		// The Node objects' labels give each node an identity
		// (enableNodeSelectorLabels): node 0's host reaches the Death
		// Star on node 1 only while a policy selects its labels.
		host := func() string {
			return a.HostCurl(cctx, "-X", "POST", "-w", " %{http_code}", "http://"+b.Pods["deathstar"].IP.String()+"/v1/request-landing")
		}
		fromNode := func(name string) string {
			return `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: k2-from-nodes}
spec:
  endpointSelector: {matchLabels: {class: deathstar, k8s:io.kubernetes.pod.namespace: ` + swNS + `}}
  ingress:
  - fromNodes:
    - matchLabels: {ward.test/node: ` + name + `}
`
		}
		c.setPolicies(t, fromNode(a.name))
		node.Eventually(t, "node 0's host to be allowed by its labels", func() bool { return host() == "Ship landed 200" })
		c.setPolicies(t, fromNode(b.name))
		node.Eventually(t, "node 0's host to be dropped (the policy selects node 1)", func() bool { return host() == "error" })
		if got := curl("tiefighter", "POST", "/v1/request-landing"); got != "error" {
			t.Errorf("tiefighter POST = %q; want dropped (only nodes are selected)", got)
		}
	})

	t.Run("toServices", func(t *testing.T) {
		// Egress of tiefighter only to the deathstar service's pods.
		c.setPolicies(t, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: tiefighter-egress, namespace: `+swNS+`}
spec:
  endpointSelector: {matchLabels: {class: tiefighter}}
  egress:
  - toServices:
    - k8sService: {serviceName: deathstar, namespace: `+swNS+`}
`)
		// Under the policy, tiefighter's egress to xwing (same node, same
		// namespace, not the service) is dropped; to the service's pod
		// allowed.
		node.Eventually(t, "tiefighter's egress policy to drop its flow to xwing", func() bool {
			return a.Curl(cctx, "tiefighter", "-X", "POST", "http://"+a.Pods["xwing"].IP.String()+"/v1/request-landing") == "error"
		})
		if got := curl("tiefighter", "POST", "/v1/request-landing"); got != "Ship landed 200" {
			t.Errorf("tiefighter to the deathstar service's pod = %q; want Ship landed 200", got)
		}
		// Without the selector's pods, the service selects nothing.
		svc, err := c.cs.CoreV1().Services(swNS).Get(ctx, "deathstar", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		svc.Spec.Selector = map[string]string{"class": "nothing"}
		if _, err := c.cs.CoreV1().Services(swNS).Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		node.Eventually(t, "the service's selector change to drop tiefighter's egress", func() bool {
			return curl("tiefighter", "POST", "/v1/request-landing") == "error"
		})
	})
	t.Run("agent restart keeps endpoint ids", func(t *testing.T) {
		// A local pod's endpoint id keys its pinned BPF state: a
		// restarted agent gives every pod the id it had.
		ids := func() map[string]uint64 {
			out := map[string]uint64{}
			for _, e := range a.status(t).Endpoints {
				out[e.Name] = e.ID
			}
			return out
		}
		before := ids()
		if len(before) < 3 {
			t.Fatalf("node 0's endpoints before the restart: %v", before)
		}
		a.Stop(t)
		a.Start(t, 46000, 9460)
		node.Eventually(t, "node 0's endpoints after the restart", func() bool { return len(ids()) == len(before) })
		if after := ids(); !maps.Equal(after, before) {
			t.Errorf("endpoint ids after the restart = %v; want %v", after, before)
		}
		node.Eventually(t, "node 0's endpoints ready again", func() bool {
			for _, e := range a.status(t).Endpoints {
				if e.State != "ready" {
					return false
				}
			}
			return true
		})
	})
}

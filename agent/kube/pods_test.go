package kube

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
)

// TestPodLabels: a pod's identity labels as Cilium derives them: its own
// labels through the default filter, the namespace's labels, the service
// account and the cluster.
func TestPodLabels(t *testing.T) {
	for _, tc := range []struct {
		name    string
		labels  map[string]string
		nsl     map[string]string
		sa      string
		cluster string
		want    map[string]string
	}{
		{
			name:    "star wars",
			labels:  map[string]string{"org": "empire", "class": "deathstar"},
			nsl:     map[string]string{"kubernetes.io/metadata.name": "default"},
			cluster: "default",
			want: map[string]string{"org": "empire", "class": "deathstar",
				"io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name": "default",
				"io.cilium.k8s.policy.serviceaccount":                        "default", "io.cilium.k8s.policy.cluster": "default"},
		},
		{
			name:    "namespace label not claimable",
			labels:  map[string]string{"app": "web", "pod-template-hash": "abc", "io.kubernetes.pod.namespace": "spoof"},
			sa:      "web-sa",
			cluster: "c1",
			want: map[string]string{"app": "web", "pod-template-hash": "abc",
				"io.cilium.k8s.policy.serviceaccount": "web-sa", "io.cilium.k8s.policy.cluster": "c1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Labels: tc.labels}, Spec: corev1.PodSpec{ServiceAccountName: tc.sa}}
			if diff := cmp.Diff(tc.want, PodLabels(p, tc.nsl, tc.cluster)); diff != "" {
				t.Errorf("PodLabels (-want +got):\n%s", diff)
			}
		})
	}
}

// fakeSink records the sources' last lists.
type fakeSink struct {
	mu    sync.Mutex
	eps   []Endpoint
	svcs  []Service
	nodes []Node
	self  *Node
	api   []netip.Prefix
	calls int
}

func (f *fakeSink) SetEndpoints(eps []Endpoint) { f.mu.Lock(); f.eps = eps; f.calls++; f.mu.Unlock() }
func (f *fakeSink) SetServices(s []Service)     { f.mu.Lock(); f.svcs = s; f.mu.Unlock() }
func (f *fakeSink) SetNodes(n []Node, self *Node, api []netip.Prefix) {
	f.mu.Lock()
	f.nodes, f.self, f.api = n, self, api
	f.mu.Unlock()
}

func (f *fakeSink) endpoints() map[string]Endpoint {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]Endpoint{}
	for _, e := range f.eps {
		out[e.Name] = e
	}
	return out
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func pod(ns, name, node, ip string, lbls map[string]string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name + "-" + ip), Labels: lbls},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}}}}}}
	if ip != "" {
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
	}
	return p
}

type running struct {
	src    *Sources
	cancel func()
	done   chan error
}

func startSources(t *testing.T, cs *fake.Clientset, sink *fakeSink, dir string) *running {
	t.Helper()
	f := informers.NewSharedInformerFactory(cs, 0)
	src, err := NewSources(f, nil, SourcesConfig{NodeName: "a", StateDir: dir, Sink: sink, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Interface: func(a netip.Addr) (string, error) {
			if a == netip.MustParseAddr("10.0.0.9") {
				return "", fmt.Errorf("no route")
			}
			return "veth-" + a.String(), nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.Start(ctx.Done())
	r := &running{src: src, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- src.Run(ctx) }()
	t.Cleanup(r.stop)
	select {
	case <-src.Synced():
	case <-time.After(20 * time.Second):
		t.Fatal("sources not synced")
	}
	return r
}

func (r *running) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	<-r.done
	r.cancel = nil
}

// TestSourcesPods: local and remote pods become endpoints with their
// labels, named ports and interface; host-network pods and pods without
// IPs do not (the latter noted); a namespace label change re-derives its
// pods; local ids survive a restart, a recreated pod gets a new id.
func TestSourcesPods(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "empire", Labels: map[string]string{"team": "dark"}}},
		pod("empire", "deathstar", "a", "10.0.0.2", map[string]string{"class": "deathstar"}),
		pod("empire", "tiefighter", "b", "10.0.1.2", map[string]string{"class": "tiefighter"}),
		pod("empire", "pending", "a", "", nil),
		pod("empire", "noroute", "a", "10.0.0.9", nil),
		func() *corev1.Pod {
			p := pod("kube-system", "hostnet", "a", "192.168.0.1", nil)
			p.Spec.HostNetwork = true
			return p
		}(),
	)
	sink := &fakeSink{}
	dir := t.TempDir()
	r := startSources(t, cs, sink, dir)
	eventually(t, "endpoints", func() bool { return len(sink.endpoints()) == 3 })
	eps := sink.endpoints()
	ds := eps["empire/deathstar"]
	want := Endpoint{Name: "empire/deathstar", ID: ds.ID, IPs: []string{"10.0.0.2"}, Namespace: "empire", Interface: "veth-10.0.0.2",
		Labels: map[string]string{"class": "deathstar", "io.cilium.k8s.namespace.labels.team": "dark",
			"io.cilium.k8s.policy.serviceaccount": "default", "io.cilium.k8s.policy.cluster": "default"},
		Ports: []Port{{Name: "http", Port: 80, Protocol: "TCP"}}}
	if diff := cmp.Diff(want, ds); diff != "" {
		t.Errorf("deathstar (-want +got):\n%s", diff)
	}
	if ds.ID < localIDBase || ds.ID >= remoteIDBase {
		t.Errorf("deathstar id %d outside the local range", ds.ID)
	}
	if tf := eps["empire/tiefighter"]; !tf.Remote || tf.Interface != "" || tf.ID < remoteIDBase {
		t.Errorf("tiefighter = %+v; want remote, no interface, a remote id", tf)
	}
	st := r.src.Status()
	if st.WithoutIPs != 1 || len(st.Notes) != 1 || st.LocalPods != 2 {
		t.Errorf("status = %+v; want 1 pod without IP noted, 2 local pods", st)
	}
	if diff := cmp.Diff([]string{"empire/noroute"}, st.WaitingForInterface); diff != "" {
		t.Errorf("waiting for interface (-want +got):\n%s", diff)
	}

	// Namespace labels change: its pods' labels follow.
	ns, _ := cs.CoreV1().Namespaces().Get(ctx, "empire", metav1.GetOptions{})
	ns.Labels["team"] = "light"
	ns.ResourceVersion = "2"
	if _, err := cs.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "namespace label", func() bool {
		return sink.endpoints()["empire/tiefighter"].Labels["io.cilium.k8s.namespace.labels.team"] == "light"
	})

	// A restart keeps the local pods' ids.
	r.stop()
	sink2 := &fakeSink{}
	startSources(t, cs, sink2, dir)
	eventually(t, "endpoints after restart", func() bool { return len(sink2.endpoints()) == 3 })
	if got := sink2.endpoints()["empire/deathstar"].ID; got != ds.ID {
		t.Errorf("deathstar id after restart = %d; want %d", got, ds.ID)
	}

	// Deleted and recreated with another IP: a new id, the old one gone.
	if err := cs.CoreV1().Pods("empire").Delete(ctx, "deathstar", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Pods("empire").Create(ctx, pod("empire", "deathstar", "a", "10.0.0.3", map[string]string{"class": "deathstar"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "recreated pod", func() bool {
		e := sink2.endpoints()["empire/deathstar"]
		return len(e.IPs) == 1 && e.IPs[0] == "10.0.0.3"
	})
	if got := sink2.endpoints()["empire/deathstar"].ID; got == ds.ID {
		t.Errorf("recreated deathstar kept id %d", got)
	}
	if n := len(sink2.endpoints()); n != 3 {
		t.Errorf("%d endpoints; want 3", n)
	}
}

// TestSourcesServicesAndNodes: services with a selector select; without
// one they stand for their EndpointSlices' ready addresses; other nodes
// carry their addresses and labels; the default/kubernetes EndpointSlice
// names the kube-apiserver.
func TestSourcesServicesAndNodes(t *testing.T) {
	ready, notReady := true, false
	slice := func(ns, svc string, addrs ...string) *discoveryv1.EndpointSlice {
		es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: svc + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: svc}}}
		for _, a := range addrs {
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
		}
		return es
	}
	db := slice("default", "db", "10.9.0.2", "10.9.0.1")
	db.Endpoints = append(db.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.9.0.3"}, Conditions: discoveryv1.EndpointConditions{Ready: &notReady}})
	cs := fake.NewClientset(
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web", Labels: map[string]string{"tier": "front"}}, Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "db"}},
		db, slice("default", "kubernetes", "172.31.0.10"),
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "a", Labels: map[string]string{"role": "edge"}}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "172.31.0.1"}}}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "b", Labels: map[string]string{"zone": "b"}}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "172.31.0.2"}, {Type: corev1.NodeHostName, Address: "b"}}}},
	)
	sink := &fakeSink{}
	startSources(t, cs, sink, "")
	eventually(t, "services and nodes", func() bool {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		return len(sink.svcs) == 2 && len(sink.nodes) == 1 && len(sink.api) == 1
	})
	sink.mu.Lock()
	defer sink.mu.Unlock()
	wantSvcs := []Service{
		{Name: "db", Namespace: "default", Addresses: []string{"10.9.0.1", "10.9.0.2"}},
		{Name: "web", Namespace: "default", Labels: map[string]string{"tier": "front"}, Selector: map[string]string{"app": "web"}},
	}
	if diff := cmp.Diff(wantSvcs, sink.svcs); diff != "" {
		t.Errorf("services (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(&Node{Name: "a", Labels: map[string]string{"role": "edge"}}, sink.self); diff != "" {
		t.Errorf("this node (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Node{{Name: "b", Addresses: []string{"172.31.0.2"}, Labels: map[string]string{"zone": "b"}}}, sink.nodes); diff != "" {
		t.Errorf("nodes (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]netip.Prefix{netip.MustParsePrefix("172.31.0.10/32")}, sink.api, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("apiserver (-want +got):\n%s", diff)
	}
}

package datapath

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/node"
)

// TestExtendedIPProtocols: with enableExtendedIPProtocols (Cilium's
// --enable-extended-ip-protocols) a policy allowing the IP protocol VRRP
// (112, no ports) between two routers is accepted by wardd and enforced by
// the datapath: VRRP from the peer router passes, VRRP from another pod is
// dropped, and TCP between the routers is dropped (only VRRP is allowed).
func TestExtendedIPProtocols(t *testing.T) {
	n := node.New(t,
		node.PodSpec{Name: "router-a", Labels: map[string]string{"role": "vrrp"}},
		node.PodSpec{Name: "router-b", Labels: map[string]string{"role": "vrrp"}},
		node.PodSpec{Name: "intruder", Labels: map[string]string{"role": "other"}})
	n.Serve(t, "router-b", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }), ":80")
	n.WritePolicy(t, "vrrp.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: vrrp}
spec:
  endpointSelector: {matchLabels: {role: vrrp}}
  ingress:
  - fromEndpoints: [{matchLabels: {role: vrrp}}]
    toPorts:
    - ports: [{protocol: VRRP}]
`)
	n.Config.EnableExtendedIPProtocols = true
	n.Start(t, 38600, 9716)

	b := n.Pods["router-b"]
	pc, err := b.ListenPacket("ip4:112", "0.0.0.0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var mu sync.Mutex
	got := map[string]map[string]bool{} // source -> payloads
	go func() {
		buf := make([]byte, 1500)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			mu.Lock()
			if got[from.String()] == nil {
				got[from.String()] = map[string]bool{}
			}
			got[from.String()][string(buf[:k])] = true
			mu.Unlock()
		}
	}()
	c, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stop()
	send := func(from, payload string) {
		t.Helper()
		conn, err := n.Pods[from].Dial(c, "ip4:112", b.IP.String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write([]byte(payload)); err != nil {
			t.Fatal(err)
		}
	}
	seen := func(from, payload string) bool {
		mu.Lock()
		defer mu.Unlock()
		return got[n.Pods[from].IP.String()][payload]
	}
	node.Eventually(t, "VRRP from the peer router to arrive", func() bool {
		send("router-a", "hello")
		return seen("router-a", "hello")
	})
	for range 5 {
		send("intruder", "intrude")
	}
	// A marker from the peer after the intruder's packets: once it is
	// in, the intruder's (sent before it, same path) would be too.
	node.Eventually(t, "the marker", func() bool {
		send("router-a", "marker")
		return seen("router-a", "marker")
	})
	if seen("intruder", "intrude") {
		t.Error("VRRP from a pod the policy does not name arrived")
	}
	if got := n.Curl(c, "router-a", "http://"+b.IP.String()+"/"); got != "error" {
		t.Errorf("TCP between the routers = %q; want dropped (only VRRP is allowed)", got)
	}
}

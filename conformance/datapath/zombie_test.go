package datapath

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/wardproxy/ward/bpf/redirect"
	cdns "github.com/wardproxy/ward/conformance/dns"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/filters/dns"
	"github.com/wardproxy/ward/internal/testenv"
)

const zombiePolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn}
spec:
  endpointSelector: {matchLabels: {class: mediabot}}
  egress:
  - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*.github.test"}]
  - toFQDNs: [{matchPattern: "*.github.test"}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
`

// TestFQDNZombies: an IP whose DNS TTL expired stays allowed while the
// endpoint still has a connection to it (the datapath's conntrack keeps it
// a zombie, as Cilium does), so new connections to the name keep working;
// an expired IP without a connection is forgotten and new connections to
// it are dropped.
func TestFQDNZombies(t *testing.T) {
	testenv.RequireCommand(t, "dig")
	n := node.New(t,
		node.PodSpec{Name: "kube-dns", Labels: map[string]string{"k8s-app": "kube-dns"}},
		node.PodSpec{Name: "mediabot", Labels: map[string]string{"class": "mediabot"}},
		node.PodSpec{Name: "api", Labels: map[string]string{"app": "api"}, Unmanaged: true},
		node.PodSpec{Name: "support", Labels: map[string]string{"app": "support"}, Unmanaged: true})
	hello := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("hello")) })
	n.Serve(t, "api", hello, ":80")
	n.Serve(t, "support", hello, ":80")
	api, support := n.Pods["api"].IP, n.Pods["support"].IP
	kd := n.Pods["kube-dns"]
	cdns.StartUnbound(t, cdns.Zone{Origin: "github.test.", Body: fmt.Sprintf(`@ 1 IN SOA ns.github.test. admin.github.test. 1 3600 600 86400 1
@ 1 IN NS ns.github.test.
ns 1 IN A 192.0.2.53
api 1 IN A %s
support 1 IN A %s
`, api, support)}, cdns.UnboundConfig{Addr: netip.AddrPortFrom(kd.IP, 53), Wrap: []string{"ip", "netns", "exec", kd.NetNS}})
	n.WritePolicy(t, "fqdn.yaml", zombiePolicy)
	// One-second TTLs and collection, so the test sees expiry quickly.
	n.Config.DNS = dns.Config{MinTTL: time.Second, GCInterval: time.Second}
	n.Start(t, 29000, 9009)

	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	mb := n.Pods["mediabot"]
	server := netip.AddrPortFrom(kd.IP, 53)
	curl := func(ip netip.Addr) string { return n.Curl(c, "mediabot", "http://"+ip.String()+"/") }
	node.Eventually(t, "the DNS proxy to answer", func() bool {
		out, _ := mb.Run(c, "dig", "@"+kd.IP.String(), "+tries=1", "+time=2", "api.github.test.")
		return cdns.ParseDig(out).Status == "NOERROR"
	})
	for _, name := range []string{"api.github.test.", "support.github.test."} {
		if r := cdns.Dig(t, []string{"ip", "netns", "exec", mb.NetNS}, server, name); r.Status != "NOERROR" {
			t.Fatalf("dig %s = %s", name, r.Status)
		}
	}
	if got := curl(api); got != "hello" {
		t.Fatalf("api right after resolution = %q; want hello", got)
	}
	// A live keep-alive connection to api; none to support.
	conn, err := mb.Dial(c, "tcp", netip.AddrPortFrom(api, 80).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	get := func() error {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: api.github.test\r\n\r\n")); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	if err := get(); err != nil {
		t.Fatalf("keep-alive request: %v", err)
	}
	// support's IP expires and, without a connection, is forgotten (its
	// ipcache entry goes; probing it with connections would keep it).
	ipc := func(ip netip.Addr) bool {
		dp, err := redirect.Load(redirect.Config{PinDir: n.Config.Datapath.PinDir})
		if err != nil {
			t.Fatal(err)
		}
		defer dp.Close()
		m, err := dp.IPCache().Entries()
		if err != nil {
			t.Fatal(err)
		}
		_, ok := m[netip.PrefixFrom(ip, 32)]
		return ok
	}
	node.Eventually(t, "support's expired IP to be forgotten", func() bool { return !ipc(support) })
	if got := curl(support); got != "error" {
		t.Errorf("a new connection to the forgotten IP = %q; want dropped", got)
	}
	// api's IP expired at the same time but a connection uses it: still
	// allowed, for that connection and for new ones.
	if err := get(); err != nil {
		t.Errorf("the live connection to the zombie IP: %v", err)
	}
	if got := curl(api); got != "hello" {
		t.Errorf("a new connection to the zombie IP = %q; want hello", got)
	}
	if !ipc(api) {
		t.Errorf("the zombie IP left the ipcache")
	}
}

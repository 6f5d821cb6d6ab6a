package datapath

import (
	"context"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/internal/testenv"
)

// TestCIDRExceptAndICMP: toCIDRSet with except and icmps rules through
// wardd, against addresses outside the cluster: the CIDR allows port 80 to
// every address of the subnet but the excepted one, and only to that port;
// the ICMP rule allows echo requests (type 8, by name EchoRequest too) to
// one address and nothing else.
func TestCIDRExceptAndICMP(t *testing.T) {
	testenv.RequireCommand(t, "ping")
	n := node.New(t,
		node.PodSpec{Name: "client", Labels: map[string]string{"app": "client"}},
		node.PodSpec{Name: "ext1", Labels: map[string]string{"app": "ext1"}, Unmanaged: true},
		node.PodSpec{Name: "ext2", Labels: map[string]string{"app": "ext2"}, Unmanaged: true})
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	for _, p := range []string{"ext1", "ext2"} {
		n.Serve(t, p, ok, ":80", ":81")
	}
	e1, e2 := n.Pods["ext1"].IP, n.Pods["ext2"].IP
	subnet := netip.PrefixFrom(e1, 24).Masked()
	n.WritePolicy(t, "cidr.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cidr-icmp}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toCIDRSet:
    - cidr: `+subnet.String()+`
      except: [`+e2.String()+`/32]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
  - toCIDR: [`+e1.String()+`/32]
    icmps:
    - fields: [{type: EchoRequest, family: IPv4}]
`)
	n.Start(t, 38800, 9718)
	c, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stop()
	curl := func(ip netip.Addr, port string) string { return n.Curl(c, "client", "http://"+ip.String()+port+"/") }
	ping := func(ip netip.Addr) bool {
		_, err := n.Pods["client"].Run(c, "ping", "-c", "1", "-W", "2", ip.String())
		return err == nil
	}
	node.Eventually(t, "port 80 in the CIDR", func() bool { return curl(e1, ":80") == "ok" })
	if got := curl(e2, ":80"); got != "error" {
		t.Errorf("the excepted address on 80 = %q; want dropped", got)
	}
	if got := curl(e1, ":81"); got != "error" {
		t.Errorf("port 81 = %q; want dropped", got)
	}
	if !ping(e1) {
		t.Error("echo request to the ICMP rule's address dropped; want allowed")
	}
	if ping(e2) {
		t.Error("echo request to another address allowed; want dropped")
	}
}

package datapath

import (
	"context"
	"net/http"
	"net/netip"
	"testing"
	"time"

	cdns "github.com/wardproxy/ward/conformance/dns"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/internal/testenv"
)

const mediabotPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: fqdn
spec:
  endpointSelector:
    matchLabels: {class: mediabot}
  egress:
  - toEndpoints:
    - matchLabels: {k8s-app: kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns:
        - matchPattern: "*.github.test"
  - toFQDNs:
    - matchName: api.github.test
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
`

// TestWarddDNSAndFQDN is the seed's mediabot scenario on a node of pods
// run by wardd: dig in the mediabot pod is redirected by BPF to wardd's
// DNS proxy, which applies the DNS rules and forwards to unbound in the
// kube-dns pod; the IP of an allowed answer is in the ipcache and policy
// maps before dig gets it, so curl right after resolution connects on
// port 80 (and not on 8080, and not before resolution).
func TestWarddDNSAndFQDN(t *testing.T) {
	testenv.RequireCommand(t, "dig")
	n := node.New(t,
		node.PodSpec{Name: "kube-dns", Labels: map[string]string{"k8s-app": "kube-dns"}},
		node.PodSpec{Name: "mediabot", Labels: map[string]string{"class": "mediabot", "org": "empire"}},
		// outside the cluster: only DNS gives its address an identity
		node.PodSpec{Name: "github", Labels: map[string]string{"app": "github"}, Unmanaged: true})
	pods := n.Pods
	gh := pods["github"]
	n.Serve(t, "github", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("github")) }), ":80", ":8080")
	zone := cdns.Zone{Origin: "github.test.", Body: `@ IN SOA ns.github.test. admin.github.test. 1 3600 600 86400 60
@ IN NS ns.github.test.
@ IN A ` + gh.IP.String() + `
ns IN A 192.0.2.53
api IN A ` + gh.IP.String() + `
support IN A 192.0.2.10
`}
	kd := pods["kube-dns"]
	cdns.StartUnbound(t, zone, cdns.UnboundConfig{Addr: netip.AddrPortFrom(kd.IP, 53), Wrap: []string{"ip", "netns", "exec", kd.NetNS}})
	n.WritePolicy(t, "fqdn.yaml", mediabotPolicy)
	n.Start(t, 23000, 9003)

	mb := []string{"ip", "netns", "exec", pods["mediabot"].NetNS}
	server := netip.AddrPortFrom(kd.IP, 53)
	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	curl := func(port string) string { return n.Curl(c, "mediabot", "http://"+gh.IP.String()+port+"/") }
	// Wait until the policy is in force: a name outside the pattern is
	// refused by the proxy.
	node.Eventually(t, "the DNS proxy to refuse github.test", func() bool {
		out, _ := pods["mediabot"].Run(c, "dig", "@"+kd.IP.String(), "+tries=1", "+time=2", "github.test.")
		return cdns.ParseDig(out).Status == "REFUSED"
	})
	if got := curl(":80"); got != "error" {
		t.Errorf("before resolution: curl github:80 = %q; want dropped", got)
	}
	r := cdns.Dig(t, mb, server, "api.github.test.")
	if r.Status != "NOERROR" || len(r.IPs()) != 1 || r.IPs()[0] != gh.IP.String() {
		t.Fatalf("dig api.github.test = %s %v; want NOERROR %s\n%s", r.Status, r.IPs(), gh.IP, r.Output)
	}
	// Right after the answer: allowed on 80, not on 8080.
	if got := curl(":80"); got != "github" {
		t.Errorf("after resolution: curl github:80 = %q; want github", got)
	}
	if got := curl(":8080"); got != "error" {
		t.Errorf("after resolution: curl github:8080 = %q; want dropped", got)
	}
	if r := cdns.Dig(t, mb, server, "support.github.test.", "+tcp"); r.Status != "NOERROR" {
		t.Errorf("dig +tcp support.github.test = %s; want NOERROR (pattern allows it)", r.Status)
	}
}

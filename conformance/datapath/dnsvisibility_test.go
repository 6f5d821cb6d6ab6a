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

// TestDNSVisibilityWithoutDefaultDeny: the seed's pattern of a policy that
// intercepts DNS without putting endpoints into default deny
// (enableDefaultDeny: {egress: false, ingress: false}). Through wardd the
// queries still go through the DNS proxy — its DNS rules apply (a name
// outside the pattern is REFUSED) — while other egress is not denied.
// Before the fix the datapath skipped the policy map of a direction that
// was not default deny, so the DNS rules (and deny rules) were silently
// not enforced.
func TestDNSVisibilityWithoutDefaultDeny(t *testing.T) {
	testenv.RequireCommand(t, "dig")
	n := node.New(t,
		node.PodSpec{Name: "kube-dns", Labels: map[string]string{"k8s-app": "kube-dns"}},
		node.PodSpec{Name: "app", Labels: map[string]string{"app": "web"}},
		node.PodSpec{Name: "github", Labels: map[string]string{"app": "github"}, Unmanaged: true})
	gh := n.Pods["github"]
	n.Serve(t, "github", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("github")) }), ":8080")
	zone := cdns.Zone{Origin: "github.test.", Body: `@ IN SOA ns.github.test. admin.github.test. 1 3600 600 86400 60
@ IN NS ns.github.test.
ns IN A 192.0.2.53
api IN A ` + gh.IP.String() + `
`}
	kd := n.Pods["kube-dns"]
	cdns.StartUnbound(t, zone, cdns.UnboundConfig{Addr: netip.AddrPortFrom(kd.IP, 53), Wrap: []string{"ip", "netns", "exec", kd.NetNS}})
	n.WritePolicy(t, "dns-visibility.yaml", `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: dns-visibility}
spec:
  endpointSelector: {matchLabels: {app: web}}
  enableDefaultDeny: {egress: false, ingress: false}
  egress:
  - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
      rules:
        dns: [{matchPattern: "*.github.test"}]
`)
	n.Start(t, 38500, 9715)
	c, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stop()
	node.Eventually(t, "the DNS proxy to refuse a name outside the pattern", func() bool {
		out, _ := n.Pods["app"].Run(c, "dig", "@"+kd.IP.String(), "+tries=1", "+time=2", "other.test.")
		return cdns.ParseDig(out).Status == "REFUSED"
	})
	r := cdns.Dig(t, []string{"ip", "netns", "exec", n.Pods["app"].NetNS}, netip.AddrPortFrom(kd.IP, 53), "api.github.test.")
	if r.Status != "NOERROR" || len(r.IPs()) != 1 {
		t.Errorf("dig api.github.test = %s %v; want NOERROR", r.Status, r.IPs())
	}
	// No default deny: other egress passes.
	if got := n.Curl(c, "app", "http://"+gh.IP.String()+":8080/"); got != "github" {
		t.Errorf("curl github:8080 = %q; want github (egress is not default deny)", got)
	}
}

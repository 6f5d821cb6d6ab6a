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

// The seed's "Combining DNS, Port and L7 Rules" (examples/dns/port): GitHub
// subdomains on TCP 443 only, here with an HTTP rule on that port (plain
// HTTP: TLS interception is another test's).
const fqdnL7Policy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: fqdn
spec:
  endpointSelector:
    matchLabels: {org: empire, class: mediabot}
  egress:
  - toFQDNs:
    - matchPattern: "*.github.com"
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
      rules:
        http: [{method: GET, path: /allowed}]
  - toEndpoints:
    - matchLabels: {k8s-app: kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*"}]
`

// TestWarddFQDNWithL7: dig support.github.com in the mediabot pod, then
// curl to the world pod that name resolves to: GET /allowed on 443 passes
// the mediabot's egress HTTP rule (200), another path gets Envoy's 403, and
// port 80 is dropped. ward.http finds the destination's identity in Envoy's
// identity table, which learns the DNS-derived IP (the FQDN identity the
// DNS proxy allocated) before the answer is released; before, it never did
// and every request was 403 (the destination was world).
func TestWarddFQDNWithL7(t *testing.T) {
	testenv.RequireCommand(t, "dig")
	n := node.New(t,
		node.PodSpec{Name: "kube-dns", Labels: map[string]string{"k8s-app": "kube-dns"}},
		node.PodSpec{Name: "mediabot", Labels: map[string]string{"class": "mediabot", "org": "empire"}},
		node.PodSpec{Name: "github", Labels: map[string]string{"app": "github"}, Unmanaged: true},
		node.PodSpec{Name: "github-api", Labels: map[string]string{"app": "github-api"}, Unmanaged: true})
	gh, api, kd := n.Pods["github"], n.Pods["github-api"], n.Pods["kube-dns"]
	for _, pod := range []string{"github", "github-api"} {
		n.Serve(t, pod, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(pod)) }), ":443", ":80")
	}
	zone := cdns.Zone{Origin: "github.com.", Body: `@ IN SOA ns.github.com. admin.github.com. 1 3600 600 86400 60
@ IN NS ns.github.com.
ns IN A 192.0.2.53
support IN A ` + gh.IP.String() + `
api IN A ` + api.IP.String() + `
`}
	cdns.StartUnbound(t, zone, cdns.UnboundConfig{Addr: netip.AddrPortFrom(kd.IP, 53), Wrap: []string{"ip", "netns", "exec", kd.NetNS}})
	n.WritePolicy(t, "fqdn.yaml", fqdnL7Policy)
	n.Start(t, 37300, 9703)

	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	mb := []string{"ip", "netns", "exec", n.Pods["mediabot"].NetNS}
	node.Eventually(t, "the DNS proxy to answer for support.github.com", func() bool {
		out, _ := n.Pods["mediabot"].Run(c, "dig", "@"+kd.IP.String(), "+tries=1", "+time=2", "support.github.com.")
		return cdns.ParseDig(out).Status == "NOERROR"
	})
	r := cdns.Dig(t, mb, netip.AddrPortFrom(kd.IP, 53), "support.github.com.")
	if r.Status != "NOERROR" || len(r.IPs()) != 1 || r.IPs()[0] != gh.IP.String() {
		t.Fatalf("dig support.github.com = %s %v; want NOERROR %s\n%s", r.Status, r.IPs(), gh.IP, r.Output)
	}
	// Right after the answer, by name as a user does.
	resolve := "support.github.com:443:" + gh.IP.String()
	curl := func(url string) string {
		return n.Curl(c, "mediabot", "-w", " %{http_code}", "--resolve", resolve, "--resolve", "support.github.com:80:"+gh.IP.String(), url)
	}
	if got := curl("http://support.github.com:443/allowed"); got != "github 200" {
		t.Errorf("GET :443/allowed = %q; want github 200", got)
	}
	if got := curl("http://support.github.com:443/private"); got != "Access denied 403" {
		t.Errorf("GET :443/private = %q; want Access denied 403 from Envoy", got)
	}
	if got := curl("http://support.github.com/allowed"); got != "error" {
		t.Errorf("GET :80/allowed = %q; want dropped", got)
	}
	// Another name of the same selector: its IP gets the FQDN identity
	// allocated already (no policy change), Envoy's table learns it too.
	r = cdns.Dig(t, mb, netip.AddrPortFrom(kd.IP, 53), "api.github.com.")
	if r.Status != "NOERROR" || len(r.IPs()) != 1 || r.IPs()[0] != api.IP.String() {
		t.Fatalf("dig api.github.com = %s %v; want NOERROR %s\n%s", r.Status, r.IPs(), api.IP, r.Output)
	}
	if got := n.Curl(c, "mediabot", "-w", " %{http_code}", "--resolve", "api.github.com:443:"+api.IP.String(), "http://api.github.com:443/allowed"); got != "github-api 200" {
		t.Errorf("GET api.github.com:443/allowed = %q; want github-api 200", got)
	}
}

package attack

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	cdns "github.com/wardproxy/ward/conformance/dns"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/filters/dns"
	"github.com/wardproxy/ward/internal/testenv"
)

// mediabotToDeathstar is the seed's mediabot policy plus an
// identity-based rule: mediabot may reach the deathstar pod on 8080 only,
// and the names of the FQDN rule on 80.
const mediabotToDeathstar = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: mediabot}
spec:
  endpointSelector: {matchLabels: {class: mediabot}}
  egress:
  - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*.github.test"}]
  - toFQDNs: [{matchName: api.github.test}, {matchName: support.github.test}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
  - toEndpoints: [{matchLabels: {class: deathstar}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
`

// TestAttackDNSAnswerNamesPodIP: whoever controls a DNS zone an FQDN rule
// allows answers with a pod's IP (api.github.test -> the deathstar pod).
// Such an answer must not turn the pod's ipcache entry into the FQDN
// identity (mediabot's toFQDNs rule would then reach the pod on a port
// its policy does not allow, 80, and the pod's identity-based rules would
// stop matching, 8080), nor delete it when the answer expires (the pod
// would become "world"). The endpoint's claim wins over the FQDN one
// (agent/ipcache) before and after the answer expires. Fails against
// 84ee6a5^, where the DNS glue wrote the BPF ipcache itself: after the
// answer expired mediabot -> deathstar:8080 was dropped.
func TestAttackDNSAnswerNamesPodIP(t *testing.T) {
	testenv.RequireCommand(t, "dig")
	n := node.New(t,
		node.PodSpec{Name: "kube-dns", Labels: map[string]string{"k8s-app": "kube-dns"}},
		node.PodSpec{Name: "mediabot", Labels: map[string]string{"class": "mediabot"}},
		node.PodSpec{Name: "deathstar", Labels: map[string]string{"class": "deathstar"}},
		// outside the cluster: only DNS gives its address an identity
		node.PodSpec{Name: "github", Labels: map[string]string{"app": "github"}, Unmanaged: true})
	ds, gh, kd := n.Pods["deathstar"], n.Pods["github"], n.Pods["kube-dns"]
	serveText(t, n, "deathstar", "deathstar", ":80", ":8080")
	serveText(t, n, "github", "github", ":80")
	// TTL 2: short enough to wait for, long enough to use the answers.
	zone := cdns.Zone{Origin: "github.test.", Body: `@ IN SOA ns.github.test. admin.github.test. 1 3600 600 86400 2
@ IN NS ns.github.test.
ns IN A 192.0.2.53
api 2 IN A ` + ds.IP.String() + `
support 2 IN A ` + gh.IP.String() + `
`}
	cdns.StartUnbound(t, zone, cdns.UnboundConfig{Addr: netip.AddrPortFrom(kd.IP, 53), Wrap: []string{"ip", "netns", "exec", kd.NetNS}})
	n.WritePolicy(t, "mediabot.yaml", mediabotToDeathstar)
	n.Config.DNS.GCInterval = 200 * time.Millisecond
	n.Start(t, 27300, 9110)

	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	mb := []string{"ip", "netns", "exec", n.Pods["mediabot"].NetNS}
	server := netip.AddrPortFrom(kd.IP, 53)
	curl := func(ip netip.Addr, port string) string {
		return n.Curl(c, "mediabot", "http://"+ip.String()+port+"/")
	}
	check := func(when string) {
		t.Helper()
		if got := curl(ds.IP, ":8080"); got != "deathstar" {
			t.Errorf("%s: mediabot -> deathstar:8080 = %q; want deathstar (its identity-based rule)", when, got)
		}
		if got := curl(ds.IP, ":80"); got != "error" {
			t.Errorf("%s: mediabot -> deathstar:80 = %q; want dropped (no rule allows it)", when, got)
		}
	}
	node.Eventually(t, "the mediabot policy to apply", func() bool { return curl(ds.IP, ":8080") == "deathstar" })
	check("before any answer")

	if r := cdns.Dig(t, mb, server, "api.github.test."); r.Status != "NOERROR" || len(r.IPs()) != 1 || r.IPs()[0] != ds.IP.String() {
		t.Fatalf("dig api.github.test = %s %v; want NOERROR %s\n%s", r.Status, r.IPs(), ds.IP, r.Output)
	}
	check("after an answer naming the deathstar pod")

	// The toFQDNs rule works: support.github.test names a world address,
	// reachable on 80 right after the answer.
	if r := cdns.Dig(t, mb, server, "support.github.test."); r.Status != "NOERROR" || len(r.IPs()) != 1 {
		t.Fatalf("dig support.github.test = %s %v; want NOERROR %s\n%s", r.Status, r.IPs(), gh.IP, r.Output)
	}
	if got := curl(gh.IP, ":80"); got != "github" {
		t.Fatalf("right after resolution: mediabot -> github:80 = %q; want github", got)
	}
	// The DNS proxy forgets the deathstar IP once the answer expired and
	// no connection uses it any more (a zombie until then, as in Cilium):
	// its saved state, written every GC, says when; nothing here connects
	// meanwhile, so no new flow keeps it.
	state := filepath.Join(n.StateDir, "fqdn-state.json")
	node.Eventually(t, "the DNS proxy to forget the answer naming the deathstar pod", func() bool {
		st, err := dns.ReadState(state)
		if err != nil {
			return false
		}
		for _, e := range st.Entries {
			if e.IP == ds.IP {
				return false
			}
		}
		for _, ip := range st.IPs {
			if ip.IP == ds.IP {
				return false
			}
		}
		return true
	})
	check("after the answer naming the deathstar pod expired")
}

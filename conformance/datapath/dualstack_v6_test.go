package datapath

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cdns "github.com/wardproxy/ward/conformance/dns"
	"github.com/wardproxy/ward/conformance/kafka"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/conformance/servers/deathstar"
	"github.com/wardproxy/ward/internal/testenv"
)

// dualStackPods are the pods of the dual-stack scenarios: the Star Wars
// demo and the seed's mediabot (kube-dns, and github outside the cluster).
var dualStackPods = []node.PodSpec{
	{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}},
	{Name: "tiefighter", Labels: map[string]string{"org": "empire", "class": "tiefighter"}},
	{Name: "xwing", Labels: map[string]string{"org": "alliance", "class": "xwing"}},
	{Name: "kube-dns", Labels: map[string]string{"k8s-app": "kube-dns"}},
	{Name: "mediabot", Labels: map[string]string{"class": "mediabot", "org": "empire"}},
	{Name: "github", Labels: map[string]string{"app": "github"}, Unmanaged: true},
	{Name: "interceptor", Labels: map[string]string{"org": "empire", "class": "interceptor"}},
	{Name: "outpost", Labels: map[string]string{"app": "outpost"}, Unmanaged: true},
	{Name: "kafka", Labels: map[string]string{"app": "kafka"}},
	{Name: "empire-hq", Labels: map[string]string{"app": "empire-hq"}},
	{Name: "empire-outpost", Labels: map[string]string{"app": "empire-outpost"}},
}

// interceptorEgress is an egress HTTP policy towards the world (the
// outpost, outside the cluster), enforced on the interceptor's egress
// listener.
const interceptorEgress = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: interceptor-egress
spec:
  endpointSelector:
    matchLabels: {class: interceptor}
  egress:
  - toEntities: [world]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: GET
          path: /allowed
`

// dualStackNode is one node of dual-stack pods (ips: [v4, v6] in the
// node config) with the Star Wars L3/L4/L7 policy, the interceptor's
// egress HTTP policy and the mediabot's DNS/toFQDNs policy, and the
// servers the scenarios talk to (unbound on both of kube-dns's addresses,
// github's zone with A and AAAA records). mutate adjusts the config
// before the agent starts.
func dualStackNode(t *testing.T, table, priority int, mutate func(*node.Node)) *node.Node {
	t.Helper()
	testenv.RequireCommand(t, "dig")
	testenv.RequireCommand(t, "kcat")
	n := node.NewWith(t, node.Options{IPv6: true}, dualStackPods...)
	n.Serve(t, "deathstar", deathstar.New(), ":80", ":8080")
	gh, kd := n.Pods["github"], n.Pods["kube-dns"]
	n.Serve(t, "github", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("github")) }), ":80", ":8080")
	n.Serve(t, "outpost", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("outpost")) }), ":80", ":8080")
	zone := cdns.Zone{Origin: "github.test.", Body: `@ IN SOA ns.github.test. admin.github.test. 1 3600 600 86400 60
@ IN NS ns.github.test.
@ IN A ` + gh.IP.String() + `
ns IN A 192.0.2.53
api IN A ` + gh.IP.String() + `
api IN AAAA ` + gh.IPv6.String() + `
support IN AAAA 2001:db8::10
`}
	for _, a := range []netip.Addr{kd.IP, kd.IPv6} {
		cdns.StartUnbound(t, zone, cdns.UnboundConfig{Addr: netip.AddrPortFrom(a, 53), Wrap: []string{"ip", "netns", "exec", kd.NetNS}})
	}
	b, err := os.ReadFile(filepath.Join(testenv.Root(t), "examples/deathstar/l7/sw_l3_l4_l7_policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	n.WritePolicy(t, "deathstar.yaml", string(b))
	n.WritePolicy(t, "egress.yaml", interceptorEgress)
	n.WritePolicy(t, "fqdn.yaml", mediabotPolicy)
	// A real broker on the host's loopback, put inside the kafka pod on
	// both of its addresses by forwarders: each listener advertises the
	// pod address its clients used (TestWarddEgressKafka).
	kp := n.Pods["kafka"]
	adv := map[string]string{"PODFOUR": net.JoinHostPort(kp.IP.String(), "9092"), "PODSIX": net.JoinHostPort(kp.IPv6.String(), "9092")}
	broker := kafka.StartBroker(t, kafka.BrokerConfig{Advertise: adv, Topics: []string{"empire-announce", "deathstar-plans"}})
	for name, addr := range adv {
		network := map[string]string{"PODFOUR": "tcp4", "PODSIX": "tcp6"}[name]
		ln, err := kp.Listen(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		forward(t, ln, broker.ListenerAddr(name))
	}
	n.WritePolicy(t, "kafka.yaml", empireEgressPolicy)
	if mutate != nil {
		mutate(n)
	}
	n.Start(t, table, priority)
	return n
}

// dualStackScenarios runs the datapath scenarios on one node over IPv4
// and over IPv6 (each a subtest named by family): the Star Wars demo
// (ingress L7 at the Death Star, L3/L4 drops), Kafka egress rules with
// kcat (produce, consume, the broker's authorization error from
// ward.kafka), egress L7 towards the world
// and the mediabot's DNS rules with toFQDNs learnt from A and AAAA
// answers, with curl and dig as clients.
func dualStackScenarios(t *testing.T, n *node.Node) {
	for _, fam := range []struct {
		name string
		addr func(p string) netip.Addr
		flag string // curl's and dig's family flag
		rr   string // the record type giving github's address
	}{
		{name: "IPv4", addr: func(p string) netip.Addr { return n.Pods[p].IP }, flag: "-4", rr: "A"},
		{name: "IPv6", addr: func(p string) netip.Addr { return n.Pods[p].IPv6 }, flag: "-6", rr: "AAAA"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
			defer stop()
			ds := netip.AddrPortFrom(fam.addr("deathstar"), 80)
			curl := func(from, method, addr, path string) string {
				return n.Curl(c, from, fam.flag, "-g", "-X", method, "-w", " %{http_code}", "http://"+addr+path)
			}
			t.Run("starwars", func(t *testing.T) {
				node.Eventually(t, "Envoy to deny tiefighter's PUT", func() bool {
					return curl("tiefighter", "PUT", ds.String(), "/v1/exhaust-port") == "Access denied 403"
				})
				if got := curl("tiefighter", "POST", ds.String(), "/v1/request-landing"); got != "Ship landed 200" {
					t.Errorf("tiefighter POST %s = %q; want Ship landed 200", ds, got)
				}
				if got := curl("xwing", "POST", ds.String(), "/v1/request-landing"); got != "error" {
					t.Errorf("xwing POST %s = %q; want dropped", ds, got)
				}
				p8080 := netip.AddrPortFrom(ds.Addr(), 8080).String()
				if got := curl("tiefighter", "GET", p8080, "/"); got != "error" {
					t.Errorf("tiefighter GET %s = %q; want dropped at the Death Star's ingress", p8080, got)
				}
			})
			t.Run("egress-http", func(t *testing.T) {
				op := fam.addr("outpost")
				p80, p8080 := netip.AddrPortFrom(op, 80).String(), netip.AddrPortFrom(op, 8080).String()
				node.Eventually(t, "Envoy to deny the interceptor's GET /denied", func() bool {
					return curl("interceptor", "GET", p80, "/denied") == "Access denied 403"
				})
				if got := curl("interceptor", "GET", p80, "/allowed"); got != "outpost 200" {
					t.Errorf("interceptor GET %s/allowed = %q; want outpost 200 through its egress listener", p80, got)
				}
				if got := curl("interceptor", "GET", p8080, "/allowed"); got != "error" {
					t.Errorf("interceptor GET %s = %q; want dropped by its egress default deny", p8080, got)
				}
			})
			t.Run("kafka", func(t *testing.T) {
				// The seed's Kafka rules as the clients' egress policies,
				// through each client's egress Kafka listener.
				addr := netip.AddrPortFrom(fam.addr("kafka"), 9092).String()
				run := func(pod, stdin string, args ...string) (string, error) {
					cmd := n.Pods[pod].Command(c, "kcat", append([]string{"-b", addr, "-m", "15"}, args...)...)
					cmd.Stdin = strings.NewReader(stdin)
					out, err := cmd.CombinedOutput()
					return string(out), err
				}
				msg := "Happy 40th Birthday to General Tagge over " + fam.name
				if out, err := run("empire-hq", msg+"\n", "-P", "-t", "empire-announce"); err != nil {
					t.Fatalf("hq produce empire-announce to %s: %v\n%s", addr, err, out)
				}
				if out, err := run("empire-outpost", "", "-C", "-t", "empire-announce", "-o", "beginning", "-e"); err != nil || !strings.Contains(out, msg) {
					t.Errorf("outpost consume empire-announce from %s: %v\n%s", addr, err, out)
				}
				out, err := run("empire-outpost", "Vader Booed at Empire Karaoke Party\n", "-P", "-t", "empire-announce")
				if err == nil || !strings.Contains(strings.ToLower(out), "authoriz") {
					t.Errorf("outpost produce empire-announce to %s: err %v, output %q; want an authorization error", addr, err, out)
				}
			})
			t.Run("dns-fqdn", func(t *testing.T) {
				server := netip.AddrPortFrom(fam.addr("kube-dns"), 53)
				mb := n.Pods["mediabot"]
				gh := fam.addr("github")
				node.Eventually(t, "the DNS proxy to refuse github.test", func() bool {
					out, _ := mb.Run(c, "dig", fam.flag, "@"+server.Addr().String(), "+tries=1", "+time=2", "github.test.")
					return cdns.ParseDig(out).Status == "REFUSED"
				})
				// Not before its own answer: an A answer gives no IPv6
				// address an identity, nor an AAAA one an IPv4 address.
				if got := curl("mediabot", "GET", netip.AddrPortFrom(gh, 80).String(), "/"); got != "error" {
					t.Errorf("before resolution: curl github:80 = %q; want dropped", got)
				}
				wrap := []string{"ip", "netns", "exec", mb.NetNS}
				r := cdns.Dig(t, wrap, server, "api.github.test.", fam.rr)
				if r.Status != "NOERROR" || len(r.IPs()) != 1 || r.IPs()[0] != gh.String() {
					t.Fatalf("dig %s api.github.test @%s = %s %v; want NOERROR %s\n%s", fam.rr, server, r.Status, r.IPs(), gh, r.Output)
				}
				// Right after the answer: allowed on 80, not on 8080.
				if got := curl("mediabot", "GET", netip.AddrPortFrom(gh, 80).String(), "/"); got != "github 200" {
					t.Errorf("after resolution: curl github:80 = %q; want github 200", got)
				}
				if got := curl("mediabot", "GET", netip.AddrPortFrom(gh, 8080).String(), "/"); got != "error" {
					t.Errorf("after resolution: curl github:8080 = %q; want dropped", got)
				}
				if r := cdns.Dig(t, wrap, server, "support.github.test.", "AAAA", "+tcp"); r.Status != "NOERROR" {
					t.Errorf("dig +tcp AAAA support.github.test = %s; want NOERROR (pattern allows it)", r.Status)
				}
			})
		})
	}
}

// TestDualStack: endpoints with an IPv4 and an IPv6 address (ips: [v4, v6]
// in the node config) are enforced on both families by the tc datapath:
// the Star Wars L3/L4 and L7 policies (ingress and egress, through Envoy's
// [::] listeners) and the DNS proxy with toFQDNs from AAAA answers.
func TestDualStack(t *testing.T) {
	n := dualStackNode(t, 43000, 9430, nil)
	dualStackScenarios(t, n)
}

package datapath

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/internal/testenv"
)

// constructsPolicy gives each subject pod of TestPolicyConstructs one
// construct to prove (docs/policy-support.md names the subtests).
const constructsPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-requires}
spec:
  endpointSelector: {matchLabels: {app: req}}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
  - toRequires: [{matchLabels: {env: prod}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: egress-deny}
spec:
  endpointSelector: {matchLabels: {app: edeny}}
  egress:
  - toEntities: [all]
  egressDeny:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "81", protocol: TCP}]
  - toEntities: [world]
    icmps:
    - fields: [{type: EchoRequest, family: IPv4}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-cluster}
spec:
  endpointSelector: {matchLabels: {app: cl}}
  egress:
  - toEntities: [cluster]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-world}
spec:
  endpointSelector: {matchLabels: {app: wo}}
  egress:
  - toEntities: [world]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: port-range-any}
spec:
  endpointSelector: {matchLabels: {app: range}}
  egress:
  - toEntities: [world]
    toPorts:
    - ports: [{port: "8080", endPort: 8082, protocol: ANY}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ingress-cidr-icmp-deny}
spec:
  endpointSelector: {matchLabels: {app: srv}}
  ingress:
  - fromCIDRSet:
    - cidr: SUBNET
      except: [EXTHREE/32]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
  - fromCIDR: [EXTWO/32]
    toPorts:
    - ports: [{port: "81", protocol: TCP}]
  - fromEntities: [world]
    icmps:
    - fields: [{type: 8}]
  ingressDeny:
  - fromCIDR: [EXTONE/32]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: match-expressions}
spec:
  endpointSelector: {matchLabels: {app: sel}}
  egress:
  - toEndpoints:
    - matchExpressions:
      - {key: app, operator: In, values: [web]}
      - {key: env, operator: NotIn, values: [dev]}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
  - toEndpoints:
    - matchLabels: {app: web}
      matchExpressions:
      - {key: env, operator: DoesNotExist}
    toPorts:
    - ports: [{port: "81", protocol: TCP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: health}
spec:
  endpointSelector: {matchLabels: {app: hc}}
  egress:
  - toEntities: [health]
  ingress:
  - fromEntities: [health]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: http-host-header-match}
spec:
  endpointSelector: {matchLabels: {app: l7}}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: GET
          path: /ok
          host: a[.]ward[.]test
          headerMatches:
          - {name: X-Token, value: abc}
        - method: GET
          path: /add
          headerMatches:
          - {name: X-Added, value: "yes", mismatch: ADD}
        - method: GET
          path: /replace
          headerMatches:
          - {name: X-Token, value: abc, mismatch: REPLACE}
        - method: GET
          path: /delete
          headerMatches:
          - {name: X-Token, value: abc, mismatch: DELETE}
        - method: GET
          path: /log
          headerMatches:
          - {name: X-Token, value: abc, mismatch: LOG}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ingress-deny-forms}
spec:
  endpointSelector: {matchLabels: {app: idn}}
  ingress:
  - fromEntities: [all]
  ingressDeny:
  - fromCIDRSet: [{cidr: EXTONE/32}]
  - fromNodes: [{matchLabels: {role: wk}}]
  - fromEntities: [world]
    toPorts:
    - ports: [{port: "81", protocol: TCP}]
  - fromEntities: [world]
    icmps:
    - fields: [{type: EchoRequest}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: egress-deny-forms}
spec:
  endpointSelector: {matchLabels: {app: edn}}
  egress:
  - toEntities: [all]
  egressDeny:
  - toCIDR: [EXTONE/32]
  - toNodes: [{matchLabels: {role: wk}}]
  - toCIDRSet:
    - cidr: SUBNET
      except: [EXTWO/32]
    toPorts:
    - ports: [{port: "8081", protocol: TCP}]
  - toServices:
    - k8sServiceSelector: {selector: {matchLabels: {tier: web}}}
    toPorts:
    - ports: [{port: "81", protocol: TCP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: world-ipv4-exists-service-selector}
spec:
  endpointSelector: {matchLabels: {app: w4}}
  egress:
  - toEntities: [world-ipv4]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
  - toEndpoints:
    - matchExpressions:
      - {key: env, operator: Exists}
    toPorts:
    - ports: [{port: "81", protocol: TCP}]
  - toServices:
    - k8sServiceSelector: {selector: {matchLabels: {tier: web}}, namespace: default}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ipv6}
spec:
  endpointSelector: {matchLabels: {app: v6}}
  egress:
  - toEntities: [world-ipv6]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
  - toEntities: [world]
    icmps:
    - fields: [{type: EchoRequest, family: IPv6}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-nodes}
spec:
  endpointSelector: {matchLabels: {app: tn}}
  egress:
  - toNodes: [{matchLabels: {role: cp}}]
`

// TestPolicyConstructs: the policy constructs no other through-wardd test
// covers, each on a subject pod of one node, against real clients and
// servers: toRequires; egressDeny with ports and with ICMP under an
// allow-all; toEntities cluster, world and all against pods and
// addresses outside the cluster; toPorts with endPort and protocol ANY
// (TCP and UDP); fromCIDRSet with except, fromCIDR, ingress icmps and ingressDeny
// from a CIDR; matchExpressions In, NotIn and DoesNotExist; the health
// entity both ways on datapath.healthAddresses; HTTP rules with host and
// headerMatches (value, every mismatch action); toNodes, egressDeny
// toNodes and ingressDeny fromNodes; the deny forms (ingressDeny fromCIDRSet, fromEntities
// with ports and with ICMP; egressDeny toCIDR, toCIDRSet with except,
// toServices by k8sServiceSelector); toEntities world-ipv4;
// matchExpressions Exists; toServices k8sServiceSelector; world-ipv6 and
// ICMPv6 (the pods are dual stack).
func TestPolicyConstructs(t *testing.T) {
	testenv.RequireCommand(t, "ping")
	web := func(name, env string) node.PodSpec {
		l := map[string]string{"app": "web"}
		if env != "" {
			l["env"] = env
		}
		return node.PodSpec{Name: name, Labels: l}
	}
	subject := func(app string) node.PodSpec { return node.PodSpec{Name: app, Labels: map[string]string{"app": app}} }
	outside := func(name string) node.PodSpec {
		return node.PodSpec{Name: name, Labels: map[string]string{"outside": name}, Unmanaged: true}
	}
	n := node.NewWith(t, node.Options{IPv6: true},
		web("prod", "prod"), web("dev", "dev"), web("bare", ""),
		subject("req"), subject("edeny"), subject("cl"), subject("wo"), subject("range"),
		subject("srv"), subject("sel"), subject("hc"), subject("l7"),
		subject("idn"), subject("edn"), subject("w4"), subject("tn"), subject("v6"),
		outside("cp"), outside("wk"), // two other nodes' addresses
		outside("ext"), outside("ext2"), outside("ext3"), outside("health"))
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	for _, p := range []string{"prod", "dev", "bare", "srv", "hc", "idn"} {
		n.Serve(t, p, ok, ":80", ":81")
	}
	// l7 answers with the headers its HTTP rules' mismatch actions set.
	n.Serve(t, "l7", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok " + r.Header.Get("X-Added") + r.Header.Get("X-Token")))
	}), ":80")
	for _, p := range []string{"ext", "ext2", "ext3", "health", "cp", "wk"} {
		n.Serve(t, p, ok, ":80", ":8081", ":8083", ":4240")
	}
	for _, port := range []string{":8081", ":8083"} {
		udpEcho(t, n, "ext", port)
	}
	ip := func(pod string) string { return n.Pods[pod].IP.String() }
	subnet := netip.PrefixFrom(n.Pods["ext"].IP, 24).Masked()
	pol := strings.NewReplacer("SUBNET", subnet.String(), "EXTHREE", ip("ext3"), "EXTONE", ip("ext"), "EXTWO", ip("ext2")).Replace(constructsPolicy)
	n.WritePolicy(t, "constructs.yaml", pol)
	n.Config.Datapath.HealthAddresses = []string{ip("health")}
	n.Config.EnableNodeSelectorLabels = true
	n.Config.Nodes = []agent.Node{
		{Name: "cp", Addresses: []string{ip("cp")}, Labels: map[string]string{"role": "cp"}},
		{Name: "wk", Addresses: []string{ip("wk")}, Labels: map[string]string{"role": "wk"}},
	}
	n.Config.Services = []agent.Service{{Name: "web-prod", Labels: map[string]string{"tier": "web"}, Selector: map[string]string{"app": "web", "env": "prod"}}}
	n.Start(t, 39900, 9750)

	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	curl := func(from, to, port string) string { return n.Curl(c, from, "http://"+ip(to)+":"+port+"/") }
	ping := func(from, to string) bool {
		_, err := n.Pods[from].Run(c, "ping", "-c", "1", "-W", "2", ip(to))
		return err == nil
	}
	// expect checks flows whose verdicts must differ from the first one's
	// once the first is allowed (the policy is in place).
	type flow struct {
		from, to, port string
		allowed        bool
	}
	expect := func(t *testing.T, flows ...flow) {
		t.Helper()
		first := flows[0]
		node.Eventually(t, first.from+" -> "+first.to+":"+first.port+" allowed", func() bool {
			return curl(first.from, first.to, first.port) == "ok"
		})
		// The others at once: a dropped one waits for curl's connect
		// timeout.
		got := make([]string, len(flows))
		var wg sync.WaitGroup
		for i, f := range flows[1:] {
			wg.Go(func() { got[i+1] = curl(f.from, f.to, f.port) })
		}
		wg.Wait()
		for i, f := range flows[1:] {
			if (got[i+1] == "ok") != f.allowed {
				t.Errorf("%s -> %s:%s = %q; want allowed %v", f.from, f.to, f.port, got[i+1], f.allowed)
			}
		}
	}

	t.Run("toRequires", func(t *testing.T) {
		expect(t, flow{"req", "prod", "80", true}, flow{"req", "dev", "80", false}, flow{"req", "bare", "80", false})
	})
	t.Run("egressDeny", func(t *testing.T) {
		expect(t, flow{"edeny", "prod", "80", true}, flow{"edeny", "prod", "81", false},
			flow{"edeny", "ext", "80", true}) // toEntities: [all] reaches outside the cluster
		if ping("edeny", "ext") {
			t.Error("edeny: echo request to world allowed; want denied by egressDeny icmps")
		}
	})
	t.Run("toEntities", func(t *testing.T) {
		expect(t, flow{"cl", "prod", "80", true}, flow{"cl", "ext", "80", false})
		expect(t, flow{"wo", "ext", "80", true}, flow{"wo", "prod", "80", false})
	})
	t.Run("endPortANY", func(t *testing.T) {
		expect(t, flow{"range", "ext", "8081", true}, flow{"range", "ext", "8083", false}, flow{"range", "ext", "80", false})
		node.Eventually(t, "udp 8081 in the range", func() bool { return udpRoundTrip(c, n, "range", ip("ext")+":8081") == nil })
		if err := udpRoundTrip(c, n, "range", ip("ext")+":8083"); err == nil {
			t.Error("udp 8083 outside the range answered; want dropped")
		}
	})
	t.Run("ingressCIDRSetICMPDeny", func(t *testing.T) {
		expect(t, flow{"ext2", "srv", "80", true}, flow{"ext3", "srv", "80", false},
			flow{"ext", "srv", "80", false}, flow{"ext2", "srv", "81", true}, flow{"ext3", "srv", "81", false})
		if !ping("ext2", "srv") {
			t.Error("echo request from world to srv dropped; want allowed by ingress icmps")
		}
		if ping("ext", "srv") {
			t.Error("echo request from the ingressDeny CIDR allowed; want denied")
		}
	})
	t.Run("matchExpressions", func(t *testing.T) {
		expect(t, flow{"sel", "prod", "80", true}, flow{"sel", "bare", "80", true}, flow{"sel", "dev", "80", false},
			flow{"sel", "bare", "81", true}, flow{"sel", "prod", "81", false})
	})
	t.Run("httpHostHeaderMatches", func(t *testing.T) {
		get := func(host, token string) string {
			args := []string{"-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: " + host}
			if token != "" {
				args = append(args, "-H", "X-Token: "+token)
			}
			return n.Curl(c, "prod", append(args, "http://"+ip("l7")+"/ok")...)
		}
		node.Eventually(t, "the matching request allowed", func() bool { return get("a.ward.test", "abc") == "200" })
		for _, tc := range []struct{ host, token string }{{"b.ward.test", "abc"}, {"a.ward.test", ""}, {"a.ward.test", "abd"}} {
			if got := get(tc.host, tc.token); got != "403" {
				t.Errorf("GET /ok Host %s X-Token %q = %s; want 403", tc.host, tc.token, got)
			}
		}
		// mismatch: ADD adds the missing header, REPLACE replaces a
		// wrong value; the request goes on.
		body := func(path string, hdr ...string) string {
			var args []string
			for _, h := range hdr {
				args = append(args, "-H", h)
			}
			return n.Curl(c, "prod", append(args, "http://"+ip("l7")+path)...)
		}
		if got := body("/add"); got != "ok yes" {
			t.Errorf("GET /add without X-Added = %q; want the header added (ok yes)", got)
		}
		if got := body("/replace", "X-Token: wrong"); got != "ok abc" {
			t.Errorf("GET /replace with X-Token wrong = %q; want it replaced (ok abc)", got)
		}
		if got := body("/delete", "X-Token: wrong"); got != "ok" {
			t.Errorf("GET /delete with X-Token wrong = %q; want it deleted (ok)", got)
		}
		if got := body("/log", "X-Token: wrong"); got != "ok wrong" {
			t.Errorf("GET /log with X-Token wrong = %q; want it passed as is (ok wrong)", got)
		}
	})
	t.Run("ingressDenyForms", func(t *testing.T) {
		expect(t, flow{"prod", "idn", "81", true}, flow{"ext2", "idn", "80", true},
			flow{"ext", "idn", "80", false}, flow{"ext2", "idn", "81", false})
		if ping("ext2", "idn") {
			t.Error("echo request from world allowed; want denied by ingressDeny icmps")
		}
		if !ping("prod", "idn") {
			t.Error("echo request from a pod dropped; want allowed (the ICMP deny names world)")
		}
	})
	t.Run("egressDenyForms", func(t *testing.T) {
		expect(t, flow{"edn", "ext2", "80", true}, flow{"edn", "ext", "80", false},
			flow{"edn", "ext3", "8081", false}, flow{"edn", "ext2", "8081", true},
			flow{"edn", "prod", "81", false}, flow{"edn", "dev", "81", true})
	})
	t.Run("worldIPv4ExistsServiceSelector", func(t *testing.T) {
		expect(t, flow{"w4", "ext", "80", true}, flow{"w4", "bare", "80", false},
			flow{"w4", "dev", "81", true}, flow{"w4", "prod", "81", true}, flow{"w4", "bare", "81", false},
			flow{"w4", "prod", "80", true}, flow{"w4", "dev", "80", false})
	})
	t.Run("nodes", func(t *testing.T) {
		expect(t, flow{"tn", "cp", "80", true}, flow{"tn", "wk", "80", false})
		expect(t, flow{"edn", "cp", "80", true}, flow{"edn", "wk", "80", false})
		expect(t, flow{"cp", "idn", "80", true}, flow{"wk", "idn", "80", false})
	})
	t.Run("ipv6", func(t *testing.T) {
		url := func(a netip.Addr) string { return "http://" + netip.AddrPortFrom(a, 80).String() + "/" }
		ext := n.Pods["ext"]
		node.Eventually(t, "v6 -> world over IPv6 allowed", func() bool { return n.Curl(c, "v6", url(ext.IPv6)) == "ok" })
		if got := n.Curl(c, "v6", url(ext.IP)); got != "error" {
			t.Errorf("v6 -> world over IPv4 = %q; want dropped (world-ipv6 only)", got)
		}
		if _, err := n.Pods["v6"].Run(c, "ping", "-6", "-c", "1", "-W", "2", ext.IPv6.String()); err != nil {
			t.Errorf("ICMPv6 echo request to world dropped; want allowed by icmps family IPv6: %v", err)
		}
		if _, err := n.Pods["v6"].Run(c, "ping", "-4", "-c", "1", "-W", "2", ext.IP.String()); err == nil {
			t.Error("ICMPv4 echo request allowed; want dropped (the rule is IPv6 only)")
		}
	})
	t.Run("health", func(t *testing.T) {
		expect(t, flow{"hc", "health", "4240", true}, flow{"hc", "ext", "4240", false})
		expect(t, flow{"health", "hc", "80", true}, flow{"ext", "hc", "80", false})
	})
}

// udpEcho answers every datagram on port inside pod with "ok".
func udpEcho(t *testing.T, n *node.Node, pod, port string) {
	t.Helper()
	pc, err := n.Pods[pod].ListenPacket("udp", port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte("ok"), from)
		}
	}()
}

// udpRoundTrip sends a datagram from pod to addr and waits up to two
// seconds for the answer (a dropped datagram has none).
func udpRoundTrip(ctx context.Context, n *node.Node, pod, addr string) error {
	conn, err := n.Pods[pod].Dial(ctx, "udp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("ping")); err != nil {
		return err
	}
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 16)
	nr, err := conn.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:nr]) != "ok" {
		return errors.New("unexpected answer " + string(buf[:nr]))
	}
	return nil
}

package datapath

import (
	"context"
	"io"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/wardproxy/ward/agent"
	cdns "github.com/wardproxy/ward/conformance/dns"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/filters/dns"
	"github.com/wardproxy/ward/internal/testenv"
)

// TestWarddNamedPorts: a pod declares its container ports in the node
// config (docs/node-config.md "Named ports"); a policy naming the port
// "http" opens the port the pod calls http (8080) and no other, with the
// L7 rules of that toPorts enforced by Envoy on it.
func TestWarddNamedPorts(t *testing.T) {
	n := node.New(t,
		node.PodSpec{Name: "web", Labels: map[string]string{"app": "web"},
			Ports: []agent.ContainerPort{{Name: "http", Port: 8080}, {Name: "metrics", Port: 9090, Protocol: "TCP"}}},
		node.PodSpec{Name: "client", Labels: map[string]string{"app": "client"}})
	n.Serve(t, "web", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "web"+r.URL.Path) }), ":80", ":8080", ":9090")
	n.WritePolicy(t, "web.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web-http
spec:
  endpointSelector:
    matchLabels: {app: web}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: client}
    toPorts:
    - ports:
      - {port: http, protocol: TCP}
      rules:
        http:
        - method: GET
          path: /public
`)
	n.Start(t, 33100, 9331)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	web := n.Pods["web"].IP.String()
	curl := func(port, path string) string {
		return n.Curl(ctx, "client", "-w", " %{http_code}", "http://"+web+port+path)
	}
	node.Eventually(t, "the L7 rule on the named port", func() bool { return curl(":8080", "/private") == "Access denied 403" })
	for _, tc := range []struct{ name, port, path, want string }{
		{name: "http names 8080, GET /public allowed", port: ":8080", path: "/public", want: "web/public 200"},
		{name: "http names 8080, L7 deny", port: ":8080", path: "/private", want: "Access denied 403"},
		{name: "port 80 is not http", port: ":80", path: "/public", want: "error"},
		{name: "metrics is not named by the policy", port: ":9090", path: "/public", want: "error"},
	} {
		if got := curl(tc.port, tc.path); got != tc.want {
			t.Errorf("%s: curl %s%s = %q; want %q", tc.name, tc.port, tc.path, got, tc.want)
		}
	}
}

// TestWarddDNSRejectNameError: the node config's dns block reaches the DNS
// proxy: with rejectResponseCode nameError (docs/node-config.md "DNS
// proxy") a denied query is answered NXDOMAIN instead of the default
// REFUSED, and an allowed one still resolves.
func TestWarddDNSRejectNameError(t *testing.T) {
	testenv.RequireCommand(t, "dig")
	n := node.New(t,
		node.PodSpec{Name: "kube-dns", Labels: map[string]string{"k8s-app": "kube-dns"}},
		node.PodSpec{Name: "mediabot", Labels: map[string]string{"class": "mediabot"}})
	kd := n.Pods["kube-dns"]
	zone := cdns.Zone{Origin: "github.test.", Body: `@ IN SOA ns.github.test. admin.github.test. 1 3600 600 86400 60
@ IN NS ns.github.test.
@ IN A 192.0.2.1
ns IN A 192.0.2.53
api IN A 192.0.2.2
`}
	cdns.StartUnbound(t, zone, cdns.UnboundConfig{Addr: netip.AddrPortFrom(kd.IP, 53), Wrap: []string{"ip", "netns", "exec", kd.NetNS}})
	n.WritePolicy(t, "dns.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: dns
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
`)
	n.Config.DNS = dns.Config{RejectNXDomain: true}
	n.Start(t, 33200, 9332)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Until the policy is in force unbound answers github.test itself
	// (NOERROR); then the proxy denies it.
	var denied string
	node.Eventually(t, "the DNS proxy to deny github.test", func() bool {
		out, _ := n.Pods["mediabot"].Run(ctx, "dig", "@"+kd.IP.String(), "+tries=1", "+time=2", "github.test.")
		denied = cdns.ParseDig(out).Status
		return denied == "NXDOMAIN" || denied == "REFUSED"
	})
	if denied != "NXDOMAIN" {
		t.Errorf("denied query answered %s; want NXDOMAIN (rejectResponseCode: nameError)", denied)
	}
	r := cdns.Dig(t, []string{"ip", "netns", "exec", n.Pods["mediabot"].NetNS}, netip.AddrPortFrom(kd.IP, 53), "api.github.test.")
	if r.Status != "NOERROR" || len(r.IPs()) != 1 || r.IPs()[0] != "192.0.2.2" {
		t.Errorf("dig api.github.test = %s %v; want NOERROR 192.0.2.2\n%s", r.Status, r.IPs(), r.Output)
	}
}

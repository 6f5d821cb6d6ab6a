package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/bpf/redirect"
	cdns "github.com/wardproxy/ward/conformance/dns"
	"github.com/wardproxy/ward/conformance/netns"
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
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "curl")
	testenv.RequireCommand(t, "dig")
	f, _ := setup(t, "ward.test.inspect")
	topo := netns.New(t)
	labels := map[string]map[string]string{
		"kube-dns": {"k8s-app": "kube-dns"},
		"mediabot": {"class": "mediabot", "org": "empire"},
		"github":   {"app": "github"},
	}
	pods := map[string]*netns.Pod{}
	var eps []map[string]any
	for i, name := range []string{"kube-dns", "mediabot", "github"} {
		pods[name] = topo.AddPod(t, netns.PodConfig{Name: name, Labels: labels[name]})
		if name == "github" {
			continue // outside the cluster: only DNS gives its address an identity
		}
		eps = append(eps, map[string]any{"name": name, "id": i + 1, "ips": []string{pods[name].IP.String()}, "labels": labels[name], "interface": pods[name].HostIf})
	}
	gh := pods["github"]
	for _, port := range []string{":80", ":8080"} {
		ln, err := gh.Listen("tcp4", port)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("github")) })}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	zone := cdns.Zone{Origin: "github.test.", Body: `@ IN SOA ns.github.test. admin.github.test. 1 3600 600 86400 60
@ IN NS ns.github.test.
@ IN A ` + gh.IP.String() + `
ns IN A 192.0.2.53
api IN A ` + gh.IP.String() + `
support IN A 192.0.2.10
`}
	kd := pods["kube-dns"]
	cdns.StartUnbound(t, zone, cdns.UnboundConfig{Addr: netip.AddrPortFrom(kd.IP, 53), Wrap: []string{"ip", "netns", "exec", kd.NetNS}})

	pin := t.TempDir()
	if err := unix.Mount("bpf", pin, "bpf", 0, "mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { redirect.Cleanup(pin); unix.Unmount(pin, unix.MNT_DETACH) })
	polDir := filepath.Join(f.stateDir, "policies")
	os.MkdirAll(polDir, 0o755)
	os.WriteFile(filepath.Join(polDir, "fqdn.yaml"), []byte(mediabotPolicy), 0o644)
	cfg := map[string]any{
		"node": "wardd-dns", "policyDir": polDir, "endpoints": eps,
		"datapath": map[string]any{"enabled": true, "pinDir": pin, "routingTable": 23000 + int(topo.Subnet.Addr().As4()[2]), "routingPriority": 9003,
			"httpIngressPort": freePort(t), "kafkaIngressPort": freePort(t), "dnsPort": freePort(t)},
	}
	cb, _ := json.Marshal(cfg)
	os.WriteFile(f.config, cb, 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, f, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	}()
	t.Cleanup(func() { cancel(); <-done })

	mb := []string{"ip", "netns", "exec", pods["mediabot"].NetNS}
	server := netip.AddrPortFrom(kd.IP, 53)
	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	curl := func(port string) string {
		out, err := pods["mediabot"].Run(c, "curl", "-s", "--connect-timeout", "2", "--max-time", "5", "http://"+gh.IP.String()+port+"/")
		if err != nil {
			return "error"
		}
		return strings.TrimSpace(out)
	}
	// Wait until the policy is in force: a name outside the pattern is
	// refused by the proxy.
	eventually(t, "the DNS proxy to refuse github.test", func() bool {
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

// Package datapath runs ward whole: pods are network namespaces with veth
// pairs (conformance/netns), the tc programs of bpf/redirect enforce L3/L4
// on the pods' veths and hand the policy-selected flows with bpf_sk_assign
// to the real Envoy's transparent listener, where libward.so's ward.http
// filter finds the endpoint and the peer's identity from the connection's
// real addresses (the original destination is the socket's local address)
// and applies the HTTP rules. The policy is the seed's YAML, resolved by
// the policy engine and translated for both the datapath (bpf/policymap)
// and the proxy (xds). Clients are curl inside the pods.
package datapath

import (
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/bpf/policymap"
	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/conformance/servers/deathstar"
	"github.com/wardproxy/ward/conformance/stack"
	"github.com/wardproxy/ward/internal/testenv"
	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/xds"
)

type pod struct {
	name   string
	labels map[string]string
	p      *netns.Pod
	id     uint64
}

func TestDeathstarThroughBPFAndEnvoy(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "curl")
	topo := netns.New(t)
	pods := []*pod{
		{name: "deathstar", labels: map[string]string{"org": "empire", "class": "deathstar"}},
		{name: "tiefighter", labels: map[string]string{"org": "empire", "class": "tiefighter"}},
		{name: "xwing", labels: map[string]string{"org": "alliance", "class": "xwing"}},
	}
	for i, p := range pods {
		p.p = topo.AddPod(t, netns.PodConfig{Name: p.name, Labels: p.labels})
		p.id = uint64(i + 1)
	}
	ds := pods[0].p
	// The Death Star serves on :80 and :8080 inside its pod.
	for _, port := range []string{":80", ":8080"} {
		ln, err := ds.Listen("tcp4", port)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: deathstar.New()}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}

	// Resolve the seed's L7 policy for the pods.
	repo := policy.NewRepository(policy.Config{})
	b, err := os.ReadFile(filepath.Join(testenv.Root(t), "examples/deathstar/l7/sw_l3_l4_l7_policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ps, err := policy.Parse("sw_l3_l4_l7_policy.yaml", b)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		repo.Upsert(p)
	}
	var ws []xds.Workload
	for _, p := range pods {
		if _, err := repo.UpsertEndpoint(policy.Endpoint{ID: p.id, Labels: policy.K8sLabels(p.labels, "default")}); err != nil {
			t.Fatal(err)
		}
		ws = append(ws, xds.Workload{Name: p.name, ID: p.id, IPs: []netip.Addr{p.p.IP}})
	}
	snap := repo.Snapshot()
	nps, hosts := xds.Resources(snap, ws)

	// Envoy with a transparent HTTP listener (the ingress proxy port).
	s := stack.Start(t, stack.Options{})
	proxyPort := stack.FreePort(t)
	cfg, _ := json.Marshal(map[string]any{"xds_socket": s.Socket, "node": s.Node, "direction": "ingress", "access_log": filepath.Join(s.Dir, "access.jsonl")})
	l, err := xds.HTTPListener{Name: "ingress-proxy", Address: "0.0.0.0", Port: proxyPort, Transparent: true, Cluster: "original-dst",
		Filters: []xds.ModuleFilter{{Name: "ward.http", Config: cfg}}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	s.PushEnvoy(t, xds.EnvoyResources{
		Listeners: []types.Resource{l},
		Clusters:  []types.Resource{xds.MarkUpstream(xds.OriginalDstCluster("original-dst", false), redirect.MarkProxyIngress)},
	})
	s.PushPolicy(t, nps, hosts)

	// The datapath on a private bpffs, with proxy routing in a table of
	// this test's own.
	pin := t.TempDir()
	if err := unix.Mount("bpf", pin, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() {
		redirect.Cleanup(pin)
		unix.Unmount(pin, unix.MNT_DETACH)
	})
	dp, err := redirect.Load(redirect.Config{PinDir: pin})
	if err != nil {
		t.Fatalf("load datapath: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	undo, err := redirect.InstallProxyRouting(redirect.Routing{Table: 21000 + int(topo.Subnet.Addr().As4()[2]), Priority: 9001})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { undo() })
	ports := func(dir policy.Direction, l7 *policy.L7Port) uint16 {
		if l7.Parser == "http" && dir == policy.Ingress {
			return uint16(proxyPort)
		}
		return 0
	}
	for _, p := range pods {
		ep, _ := snap.Endpoint(p.id)
		in, err := policymap.Entries(policy.Ingress, ep.Ingress, ports)
		if err != nil {
			t.Fatal(err)
		}
		out, err := policymap.Entries(policy.Egress, ep.Egress, ports)
		if err != nil {
			t.Fatal(err)
		}
		if err := dp.SetPolicy(uint32(p.id), append(in, out...)); err != nil {
			t.Fatal(err)
		}
		if err := dp.AddEndpoint(redirect.Endpoint{ID: uint32(p.id), IP: p.p.IP, IfIndex: p.p.HostIfIndex, Identity: uint32(ep.Identity),
			EnforceIngress: ep.Ingress.Enforced, EnforceEgress: ep.Egress.Enforced}); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	curl := func(from *netns.Pod, args ...string) (string, error) {
		out, err := from.Run(ctx, "curl", append([]string{"-s", "--connect-timeout", "3", "--max-time", "10", "-w", " %{http_code}"}, args...)...)
		return strings.Join(strings.Fields(out), " "), err
	}
	tf, xw := pods[1].p, pods[2].p
	dsURL := "http://" + ds.IP.String()
	if got, err := curl(tf, "-X", "POST", dsURL+"/v1/request-landing"); got != "Ship landed 200" {
		t.Errorf("tiefighter POST /v1/request-landing = %q, %v; want Ship landed 200 (via Envoy)", got, err)
	}
	if got, err := curl(tf, "-X", "PUT", dsURL+"/v1/exhaust-port"); got != "Access denied 403" {
		t.Errorf("tiefighter PUT /v1/exhaust-port = %q, %v; want Envoy's 403", got, err)
	}
	if got, err := curl(xw, "-X", "POST", dsURL+"/v1/request-landing"); err == nil {
		t.Errorf("xwing POST = %q; want dropped at L3/L4", got)
	}
	if got, err := curl(tf, dsURL+":8080/"); err == nil {
		t.Errorf("tiefighter :8080 = %q; want dropped at L3/L4", got)
	}
	if n, _ := dp.Count(redirect.ReasonRedirected); n == 0 {
		t.Errorf("redirected counter is 0; the flows did not go through bpf_sk_assign")
	}
	// The filter saw the real peer: records name tiefighter's address.
	time.Sleep(300 * time.Millisecond)
	logb, _ := os.ReadFile(filepath.Join(s.Dir, "access.jsonl"))
	if !strings.Contains(string(logb), `"ip":"`+tf.IP.String()+`"`) || !strings.Contains(string(logb), `"ip":"`+ds.IP.String()+`","port":80`) {
		t.Errorf("access log lacks tiefighter -> deathstar:80 records:\n%s", logb)
	}
}

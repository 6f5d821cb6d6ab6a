// Package envoyhttp runs the seed's HTTP and gRPC scenarios end to end: the
// policies are the YAML files in examples/ (parsed, validated and resolved
// by the policy engine, translated by xds), the proxy is the real Envoy with
// libward.so, the servers are real (Death Star over HTTP/1.1 and h2c, Cloud
// City over gRPC) and the clients are curl and grpcurl.
//
// Without the BPF redirect, each client identity reaches Envoy on a
// listener of its own (the filter config's remote_identity) that forwards
// to the server; the policy is the server endpoint's ingress policy.
package envoyhttp

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/wardproxy/ward/conformance/servers/cloudcity"
	"github.com/wardproxy/ward/conformance/servers/deathstar"
	"github.com/wardproxy/ward/conformance/stack"
	"github.com/wardproxy/ward/internal/testenv"
	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

// workload is a pod of the scenario.
type workload struct {
	name   string
	id     uint64
	labels map[string]string
	remote bool
}

// resolve parses the policy files, resolves them for the workloads and
// returns the policy resources and each workload's identity.
func resolve(t *testing.T, files []string, ws []workload) ([]*npds.NetworkPolicy, map[string]uint32) {
	t.Helper()
	repo := policy.NewRepository(policy.Config{})
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(testenv.Root(t), f))
		if err != nil {
			t.Fatal(err)
		}
		ps, err := policy.Parse(f, b)
		if err != nil {
			t.Fatalf("policy %s: %v", f, err)
		}
		for _, p := range ps {
			repo.Upsert(p)
		}
	}
	var xw []xds.Workload
	for i, w := range ws {
		if _, err := repo.UpsertEndpoint(policy.Endpoint{ID: w.id, Labels: policy.K8sLabels(w.labels, "default")}); err != nil {
			t.Fatal(err)
		}
		xw = append(xw, xds.Workload{Name: w.name, ID: w.id, IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)})}, Remote: w.remote})
	}
	snap := repo.Snapshot()
	ids := map[string]uint32{}
	for _, w := range ws {
		ep, ok := snap.Endpoint(w.id)
		if !ok {
			t.Fatalf("no resolved policy for %s", w.name)
		}
		ids[w.name] = uint32(ep.Identity)
	}
	ps, _ := xds.Resources(snap, xw)
	return ps, ids
}

// front builds one listener per client identity in front of upstream.
func front(t *testing.T, s *stack.Stack, endpoint string, port uint16, upstream net.Addr, h2 bool, ids map[string]uint32, clients ...string) (xds.EnvoyResources, map[string]uint32) {
	t.Helper()
	ap := upstream.(*net.TCPAddr)
	res := xds.EnvoyResources{Clusters: []types.Resource{xds.StaticCluster("up", "127.0.0.1", uint32(ap.Port), h2)}}
	ports := map[string]uint32{}
	for _, c := range clients {
		ports[c] = stack.FreePort(t)
		cfg, _ := json.Marshal(map[string]any{"xds_socket": s.Socket, "node": s.Node, "endpoint": endpoint, "port": port, "remote_identity": ids[c]})
		l, err := xds.HTTPListener{Name: c, Address: "127.0.0.1", Port: ports[c], Cluster: "up",
			Filters: []xds.ModuleFilter{{Name: "ward.http", Config: cfg}}}.Build()
		if err != nil {
			t.Fatal(err)
		}
		res.Listeners = append(res.Listeners, l)
	}
	return res, ports
}

func curl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(testenv.RequireCommand(t, "curl"), append([]string{"-s", "--max-time", "10", "-w", " %{http_code}"}, args...)...).Output()
	if err != nil {
		t.Fatalf("curl %v: %v", args, err)
	}
	return strings.Join(strings.Fields(string(out)), " ")
}

func serve(t *testing.T, h func(context.Context, net.Listener)) net.Addr {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go h(ctx, l)
	return l.Addr()
}

// TestDeathstarL7 is the Star Wars demo's L7 step (examples/deathstar/l7)
// with curl over HTTP/1.1 and HTTP/2 (h2c).
func TestDeathstarL7(t *testing.T) {
	ps, ids := resolve(t, []string{"examples/deathstar/l7/sw_l3_l4_l7_policy.yaml"}, []workload{
		{name: "deathstar", id: 1, labels: map[string]string{"org": "empire", "class": "deathstar"}},
		{name: "tiefighter", id: 2, labels: map[string]string{"org": "empire", "class": "tiefighter"}, remote: true},
		{name: "xwing", id: 3, labels: map[string]string{"org": "alliance", "class": "xwing"}, remote: true},
	})
	s := stack.Start(t, stack.Options{})
	up := serve(t, func(ctx context.Context, l net.Listener) { deathstar.Serve(ctx, l, deathstar.New()) })
	res, ports := front(t, s, "deathstar", 80, up, false, ids, "tiefighter", "xwing")
	s.PushEnvoy(t, res)
	s.PushPolicy(t, ps, nil)
	url := func(c, path string) string { return "http://127.0.0.1:" + itoa(ports[c]) + path }
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"tiefighter lands", []string{"-X", "POST", url("tiefighter", "/v1/request-landing")}, "Ship landed 200"},
		{"tiefighter exhaust port", []string{"-X", "PUT", url("tiefighter", "/v1/exhaust-port")}, "Access denied 403"},
		{"tiefighter lands over h2c", []string{"--http2-prior-knowledge", "-X", "POST", url("tiefighter", "/v1/request-landing")}, "Ship landed 200"},
		{"tiefighter exhaust port over h2c", []string{"--http2-prior-knowledge", "-X", "PUT", url("tiefighter", "/v1/exhaust-port")}, "Access denied 403"},
		{"xwing lands", []string{"-X", "POST", url("xwing", "/v1/request-landing")}, "Access denied 403"},
		{"tiefighter lands with a query", []string{"-X", "POST", url("tiefighter", "/v1/request-landing?x=1")}, "Access denied 403"},
	} {
		if got := curl(t, tc.args...); got != tc.want {
			t.Errorf("%s: got %q; want %q", tc.name, got, tc.want)
		}
	}
}

// TestCloudCityGRPC is the seed's gRPC example (examples/cloudcity): grpcurl
// calls the three allowed methods and gets PermissionDenied (code 7) on the
// others, through Envoy, over HTTP/2.
func TestCloudCityGRPC(t *testing.T) {
	grpcurl := findGrpcurl(t)
	ps, ids := resolve(t, []string{"examples/cloudcity/cc-door-ingress-security.yaml"}, []workload{
		{name: "cc-door-mgr", id: 1, labels: map[string]string{"app": "cc-door-mgr"}},
		{name: "public-terminal", id: 2, labels: map[string]string{"app": "public-terminal"}, remote: true},
	})
	s := stack.Start(t, stack.Options{})
	up := serve(t, func(ctx context.Context, l net.Listener) { cloudcity.Serve(ctx, l) })
	res, ports := front(t, s, "cc-door-mgr", 50051, up, true, ids, "public-terminal")
	s.PushEnvoy(t, res)
	s.PushPolicy(t, ps, nil)
	proto := filepath.Join(testenv.Root(t), "conformance/servers/cloudcity")
	addr := "127.0.0.1:" + itoa(ports["public-terminal"])
	call := func(method, data string) (string, error) {
		out, err := exec.Command(grpcurl, "-plaintext", "-import-path", proto, "-proto", "cloudcity.proto",
			"-d", data, addr, "cloudcity.DoorManager/"+method).CombinedOutput()
		return string(out), err
	}
	for _, m := range []string{"GetName", "GetLocation", "RequestMaintenance"} {
		out, err := call(m, `{"door_id": 1}`)
		if err != nil {
			t.Errorf("%s: %v\n%s", m, err, out)
		}
	}
	for _, m := range []string{"SetAccessCode", "GetStatus"} {
		out, err := call(m, `{"door_id": 1}`)
		if err == nil || !strings.Contains(out, "Code: PermissionDenied") {
			t.Errorf("%s: err %v, output %q; want Code: PermissionDenied", m, err, out)
		}
	}
}

func findGrpcurl(t *testing.T) string {
	p := filepath.Join(testenv.Root(t), "build/bin/grpcurl")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return testenv.RequireCommand(t, "grpcurl")
}

func itoa(n uint32) string {
	b, _ := json.Marshal(n)
	return string(b)
}

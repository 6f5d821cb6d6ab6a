package datapath

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/conformance/servers/cloudcity"
	"github.com/wardproxy/ward/internal/testenv"
)

// The door managers' plain-HTTP port: GET /proto is allowed, on ingress
// (cc-door-mgr) and egress (public-terminal to door-egress).
const doorHTTPPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: door-http
spec:
  endpointSelector:
    matchLabels: {app: cc-door-mgr}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: public-terminal}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: /proto}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: terminal-egress
spec:
  endpointSelector:
    matchLabels: {app: public-terminal}
  egress:
  - toEndpoints:
    - matchLabels: {app: cc-door-mgr}
    toPorts:
    - ports: [{port: "50051", protocol: TCP}, {port: "80", protocol: TCP}]
  - toEndpoints:
    - matchLabels: {app: door-egress}
    toPorts:
    - ports: [{port: "50051", protocol: TCP}]
      rules:
        http:
        - {method: POST, path: /cloudcity.DoorManager/GetName}
        - {method: POST, path: /cloudcity.DoorManager/GetLocation}
        - {method: POST, path: /cloudcity.DoorManager/RequestMaintenance}
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: /proto}]
`

// TestWarddGRPC is the seed's Cloud City example through the agent, with
// grpcurl in the public-terminal pod: the three allowed methods succeed and
// SetAccessCode/GetStatus get PermissionDenied, on the shared ingress
// listener (cc-door-mgr's ingress policy from examples/) and on the
// terminal's own egress listener (door-egress, egress rules). On the same
// listeners h2c (curl --http2-prior-knowledge) reaches the server as h2 and
// HTTP/1.1 as HTTP/1.1: the upstream protocol follows the downstream's.
// Before that, every allowed gRPC call failed (Unavailable: the upstream
// cluster spoke HTTP/1.1 to the gRPC server).
func TestWarddGRPC(t *testing.T) {
	grpcurl := findGrpcurl(t)
	n := node.New(t,
		node.PodSpec{Name: "cc-door-mgr", Labels: map[string]string{"app": "cc-door-mgr"}},
		node.PodSpec{Name: "door-egress", Labels: map[string]string{"app": "door-egress"}},
		node.PodSpec{Name: "public-terminal", Labels: map[string]string{"app": "public-terminal"}})
	proto := func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(r.Proto)) }
	for _, pod := range []string{"cc-door-mgr", "door-egress"} {
		ln, err := n.Pods[pod].Listen("tcp", ":50051")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- cloudcity.Serve(ctx, ln) }()
		t.Cleanup(func() { cancel(); <-done })
		serveH2C(t, n, pod, http.HandlerFunc(proto))
	}
	b, err := os.ReadFile(filepath.Join(testenv.Root(t), "examples/cloudcity/cc-door-ingress-security.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	n.WritePolicy(t, "cloudcity.yaml", string(b))
	n.WritePolicy(t, "door-http.yaml", doorHTTPPolicy)
	n.Start(t, 37100, 9701)

	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	protoDir := filepath.Join(testenv.Root(t), "conformance/servers/cloudcity")
	for _, pod := range []string{"cc-door-mgr", "door-egress"} {
		ip := n.Pods[pod].IP.String()
		call := func(method string) (string, error) {
			return n.Pods["public-terminal"].Run(c, grpcurl, "-plaintext", "-max-time", "5", "-import-path", protoDir, "-proto", "cloudcity.proto",
				"-d", `{"door_id": 1}`, ip+":50051", "cloudcity.DoorManager/"+method)
		}
		node.Eventually(t, "Envoy to deny SetAccessCode to "+pod, func() bool {
			out, err := call("SetAccessCode")
			return err != nil && strings.Contains(out, "Code: PermissionDenied")
		})
		for _, m := range []string{"GetName", "GetLocation", "RequestMaintenance"} {
			if out, err := call(m); err != nil {
				t.Errorf("%s %s: %v\n%s", pod, m, err, out)
			}
		}
		if out, err := call("GetStatus"); err == nil || !strings.Contains(out, "Code: PermissionDenied") {
			t.Errorf("%s GetStatus: err %v, output %q; want Code: PermissionDenied", pod, err, out)
		}
		curl := func(args ...string) string {
			return n.Curl(c, "public-terminal", append(args, "-w", " %{http_version} %{http_code}")...)
		}
		if got := curl("--http2-prior-knowledge", "http://"+ip+"/proto"); got != "HTTP/2.0 2 200" {
			t.Errorf("%s h2c GET /proto = %q; want HTTP/2.0 2 200 (h2 on both sides)", pod, got)
		}
		if got := curl("--http1.1", "http://"+ip+"/proto"); got != "HTTP/1.1 1.1 200" {
			t.Errorf("%s HTTP/1.1 GET /proto = %q; want HTTP/1.1 1.1 200", pod, got)
		}
		if got := curl("--http2-prior-knowledge", "http://"+ip+"/other"); got != "Access denied 2 403" {
			t.Errorf("%s h2c GET /other = %q; want Access denied 2 403", pod, got)
		}
	}
}

// serveH2C serves h on port 80 of a pod over HTTP/1.1 and h2c.
func serveH2C(t *testing.T, n *node.Node, pod string, h http.Handler) {
	t.Helper()
	ln, err := n.Pods[pod].Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &p}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func findGrpcurl(t *testing.T) string {
	p := filepath.Join(testenv.Root(t), "build/bin/grpcurl")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return testenv.RequireCommand(t, "grpcurl")
}

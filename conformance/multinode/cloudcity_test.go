package multinode

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/conformance/servers/cloudcity"
	"github.com/wardproxy/ward/internal/testenv"
)

// TestCloudCityAcrossNodes is the seed's Cloud City gRPC example across
// nodes: grpcurl in public-terminal on node A calls cc-door-mgr on node B,
// whose ingress gRPC rules (examples/cloudcity) node B's Envoy enforces on
// the flows its datapath hands over from the native device: the three
// allowed methods succeed, SetAccessCode and GetStatus get
// PermissionDenied.
func TestCloudCityAcrossNodes(t *testing.T) {
	grpcurl := filepath.Join(testenv.Root(t), "build/bin/grpcurl")
	if _, err := os.Stat(grpcurl); err != nil {
		grpcurl = testenv.RequireCommand(t, "grpcurl")
	}
	c := newCluster(t,
		[]node.PodSpec{{Name: "public-terminal", Labels: map[string]string{"app": "public-terminal"}}},
		[]node.PodSpec{{Name: "cc-door-mgr", Labels: map[string]string{"app": "cc-door-mgr"}}},
	)
	a, b := c.nodes[0], c.nodes[1]
	ln, err := b.Pods["cc-door-mgr"].Listen("tcp", ":50051")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cloudcity.Serve(sctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	pol, err := os.ReadFile(filepath.Join(testenv.Root(t), "examples/cloudcity/cc-door-ingress-security.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	b.WritePolicy(t, "cloudcity.yaml", string(pol))
	a.Start(t, 37800, 9708)
	b.Start(t, 37900, 9709)

	ctx, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	protoDir := filepath.Join(testenv.Root(t), "conformance/servers/cloudcity")
	target := b.Pods["cc-door-mgr"].IP.String() + ":50051"
	call := func(method string) (string, error) {
		return a.Pods["public-terminal"].Run(ctx, grpcurl, "-plaintext", "-max-time", "5", "-import-path", protoDir, "-proto", "cloudcity.proto",
			"-d", `{"door_id": 1}`, target, "cloudcity.DoorManager/"+method)
	}
	node.Eventually(t, "node B's Envoy to deny SetAccessCode from node A", func() bool {
		out, err := call("SetAccessCode")
		return err != nil && strings.Contains(out, "Code: PermissionDenied")
	})
	for _, m := range []string{"GetName", "GetLocation", "RequestMaintenance"} {
		out, err := call(m)
		if err != nil || !strings.Contains(out, "{") {
			t.Errorf("%s from node A: %v\n%s", m, err, out)
		}
	}
	if out, err := call("GetStatus"); err == nil || !strings.Contains(out, "Code: PermissionDenied") {
		t.Errorf("GetStatus from node A: err %v, output %q; want Code: PermissionDenied", err, out)
	}
}

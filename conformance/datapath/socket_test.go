package datapath

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/conformance/node"
)

// TestSocketMode: with datapath.mode socket (each endpoint's cgroup in the
// node config) the same scenarios as TestDualStack pass on IPv4 and IPv6,
// and a connect the egress policy denies fails at once in the client with
// EPERM from the cgroup connect hook (in tc mode its SYN is dropped on the
// wire and the client times out).
func TestSocketMode(t *testing.T) {
	if netns.CgroupRoot() == "" {
		t.Skip("no cgroup v2 hierarchy mounted (socket mode needs one)")
	}
	n := dualStackNode(t, 44000, 9440, func(n *node.Node) { n.Config.Datapath.Mode = agent.ModeSocket })
	for _, ep := range n.Config.Endpoints {
		if ep.Cgroup == "" {
			t.Fatalf("endpoint %s has no cgroup in socket mode", ep.Name)
		}
	}
	dualStackScenarios(t, n)
	c, stop := context.WithTimeout(context.Background(), time.Minute)
	defer stop()
	for _, a := range []netip.Addr{n.Pods["outpost"].IP, n.Pods["outpost"].IPv6} {
		// bash's /dev/tcp: one connect(2), its errno in the message.
		out, err := n.Pods["interceptor"].Run(c, "timeout", "5", "bash", "-c", "exec 3<>/dev/tcp/"+a.String()+"/8080")
		if err == nil || !strings.Contains(out, "Operation not permitted") {
			t.Errorf("interceptor connect %s port 8080: %q, %v; want EPERM from the socket hook", a, out, err)
		}
	}
}

package multinode

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/conformance/servers/deathstar"
	"github.com/wardproxy/ward/internal/testenv"
)

// TestDeathstarAcrossNodesIPv6 is TestDeathstarAcrossNodes over IPv6 on a
// dual-stack cluster: the tiefighter on node A reaches the Death Star on
// node B at its IPv6 address through node B's Envoy (POST allowed, PUT
// 403), the xwing is dropped, and the world reaches it over IPv6 once a
// fromEntities: [world] rule allows it.
func TestDeathstarAcrossNodesIPv6(t *testing.T) {
	c := newDualStackCluster(t,
		[]node.PodSpec{
			{Name: "tiefighter", Labels: map[string]string{"org": "empire", "class": "tiefighter"}},
			{Name: "xwing", Labels: map[string]string{"org": "alliance", "class": "xwing"}},
		},
		[]node.PodSpec{{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}}},
	)
	a, b := c.nodes[0], c.nodes[1]
	b.Serve(t, "deathstar", deathstar.New(), ":80")
	pol, err := os.ReadFile(filepath.Join(testenv.Root(t), "examples/deathstar/l7/sw_l3_l4_l7_policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes {
		n.WritePolicy(t, "policy.yaml", string(pol))
	}
	a.Start(t, 47000, 9470)
	b.Start(t, 47100, 9471)

	ctx, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	url := "http://" + netip.AddrPortFrom(b.Pods["deathstar"].IPv6, 80).String()
	curl := func(from, method, path string) string {
		return a.Curl(ctx, from, "-6", "-g", "-X", method, "-w", " %{http_code}", url+path)
	}
	node.Eventually(t, "node B's Envoy to deny tiefighter's PUT from node A over IPv6", func() bool {
		return curl("tiefighter", "PUT", "/v1/exhaust-port") == "Access denied 403"
	})
	if got := curl("tiefighter", "POST", "/v1/request-landing"); got != "Ship landed 200" {
		t.Errorf("tiefighter (node A) POST = %q; want Ship landed 200", got)
	}
	if got := curl("xwing", "POST", "/v1/request-landing"); got != "error" {
		t.Errorf("xwing (node A) POST = %q; want dropped", got)
	}
	world := func(method, path string) string {
		out, err := c.world.Run(ctx, "curl", "-6", "-g", "-s", "--connect-timeout", "2", "--max-time", "5", "-X", method, "-w", " %{http_code}", url+path)
		if err != nil {
			return "error"
		}
		return strings.Join(strings.Fields(out), " ")
	}
	if got := world("POST", "/v1/request-landing"); got != "error" {
		t.Errorf("world POST without a world rule = %q; want dropped", got)
	}
	b.WritePolicy(t, "world.yaml", worldLanding)
	node.Eventually(t, "node B's Envoy to answer the world's POST over IPv6", func() bool {
		return world("POST", "/v1/request-landing") == "Ship landed 200"
	})
	if got := world("PUT", "/v1/exhaust-port"); got != "Access denied 403" {
		t.Errorf("world PUT = %q; want Access denied 403 from node B's Envoy", got)
	}
}

// TestEgressAtSourceNodeSocketMode is TestEgressAtSourceNode with node A
// in socket mode (datapath.mode: socket, the pods' cgroups in its node
// config): the tiefighter's connect to the Death Star's port 8080 on node
// B fails at once with EPERM from node A's cgroup hook, over IPv4 and
// IPv6, while port 80 is reached.
func TestEgressAtSourceNodeSocketMode(t *testing.T) {
	c := newDualStackCluster(t,
		[]node.PodSpec{{Name: "tiefighter", Labels: map[string]string{"org": "empire", "class": "tiefighter"}}},
		[]node.PodSpec{{Name: "deathstar", Labels: map[string]string{"org": "empire", "class": "deathstar"}}},
	)
	a, b := c.nodes[0], c.nodes[1]
	if a.Pods["tiefighter"].Cgroup == nil {
		t.Fatal("no cgroup v2 hierarchy: socket mode needs one")
	}
	b.Serve(t, "deathstar", deathstar.New(), ":80", ":8080")
	a.WritePolicy(t, "egress.yaml", tiefighterEgress)
	a.Config.Datapath.Mode = agent.ModeSocket
	a.Start(t, 47200, 9472)
	b.Start(t, 47300, 9473)

	ctx, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stop()
	ds := b.Pods["deathstar"]
	for _, ip := range []netip.Addr{ds.IP, ds.IPv6} {
		url := "http://" + netip.AddrPortFrom(ip, 80).String()
		node.Eventually(t, "tiefighter (node A) to reach deathstar:80 on node B at "+ip.String(), func() bool {
			return strings.HasSuffix(a.Curl(ctx, "tiefighter", "-g", "-w", " %{http_code}", url+"/v1/healthz"), " 200")
		})
		out, err := a.Pods["tiefighter"].Run(ctx, "timeout", "5", "bash", "-c", "exec 3<>/dev/tcp/"+ip.String()+"/8080")
		if err == nil || !strings.Contains(out, "Operation not permitted") {
			t.Errorf("tiefighter (node A) connect %s port 8080: %q, %v; want EPERM from node A's socket hook", ip, out, err)
		}
	}
}

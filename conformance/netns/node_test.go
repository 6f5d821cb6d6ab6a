package netns_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/netns"
)

// TestNewNode: a node topology's host side is a namespace of its own —
// its pods' veths are not in the root namespace — and two nodes on an
// underlay reach each other's pods through their native devices.
func TestNewNode(t *testing.T) {
	a, b := netns.NewNode(t), netns.NewNode(t)
	pa := a.AddPod(t, netns.PodConfig{Name: "client"})
	pb := b.AddPod(t, netns.PodConfig{Name: "server"})
	if _, err := net.InterfaceByName(pa.HostIf); err == nil {
		t.Fatalf("pod veth %s is in the root namespace; want it in %s", pa.HostIf, a.Host().Name)
	}
	under := a.NewNamespace(t, "under")
	for i, n := range []*netns.Topology{a, b} {
		if _, err := netns.Connect(n.Host(), under, fmt.Sprintf("n%d", i), netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 31, 0, byte(i + 1)}), 24)); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Host().IP("route", "add", b.Subnet.String(), "via", "172.31.0.2"); err != nil {
		t.Fatal(err)
	}
	if err := b.Host().IP("route", "add", a.Subnet.String(), "via", "172.31.0.1"); err != nil {
		t.Fatal(err)
	}
	ln, err := pb.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pa.Dial(ctx, "tcp", net.JoinHostPort(pb.IP.String(), "80"))
	if err != nil {
		t.Fatalf("pod on node A -> pod on node B: %v", err)
	}
	defer c.Close()
	buf := make([]byte, 2)
	if _, err := c.Read(buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read = %q, %v; want hi", buf, err)
	}
	// The node's host namespace routes its own pod through the pod's veth.
	out, err := a.Host().Run(ctx, "ip", "route", "get", pa.IP.String())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "dev "+pa.HostIf+" ") {
		t.Errorf("node A: ip route get %s = %q; want dev %s", pa.IP, out, pa.HostIf)
	}
}

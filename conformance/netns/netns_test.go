package netns_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/internal/testenv"
)

func TestTopology(t *testing.T) {
	topo := netns.New(t)
	a := topo.AddPod(t, netns.PodConfig{Name: "a", Labels: map[string]string{"app": "a"}})
	b := topo.AddPod(t, netns.PodConfig{Name: "b"})
	if topo.Pod("a") != a || len(topo.Pods()) != 2 {
		t.Fatalf("Pods() = %v", topo.Pods())
	}
	if !topo.Subnet.Contains(a.IP) || !topo.Subnet.Contains(b.IP) || a.IP == b.IP {
		t.Fatalf("addresses %s %s not distinct in %s", a.IP, b.IP, topo.Subnet)
	}

	ln, err := b.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from b to %s", r.RemoteAddr)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Go client in pod a.
	c, err := a.Dial(ctx, "tcp", net.JoinHostPort(b.IP.String(), "80"))
	if err != nil {
		t.Fatalf("dial from a: %v", err)
	}
	fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
	body, err := io.ReadAll(c)
	c.Close()
	if err != nil || !strings.Contains(string(body), "hello from b to "+a.IP.String()) {
		t.Fatalf("response = %q, %v; want hello with a's address", body, err)
	}

	// Real client binary in pod a.
	testenv.RequireCommand(t, "curl")
	out, err := a.Run(ctx, "curl", "-sS", "--max-time", "10", "http://"+b.IP.String()+"/")
	if err != nil || !strings.Contains(out, "hello from b") {
		t.Fatalf("curl = %q, %v", out, err)
	}

	// The host reaches pods from HostIP.
	var d net.Dialer
	hc, err := d.DialContext(ctx, "tcp", net.JoinHostPort(b.IP.String(), "80"))
	if err != nil {
		t.Fatalf("dial from host: %v", err)
	}
	if got := hc.LocalAddr().(*net.TCPAddr).IP.String(); got != topo.HostIP.String() {
		t.Errorf("host source = %s; want %s", got, topo.HostIP)
	}
	hc.Close()

	// A pod's own namespace does not see the host's interfaces.
	out, err = a.Run(ctx, "ip", "-o", "link")
	if err != nil || strings.Contains(out, a.HostIf) {
		t.Fatalf("ip link in pod = %q, %v", out, err)
	}

	if err := topo.Remove("b"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(b.NetNSPath); !os.IsNotExist(err) {
		t.Errorf("netns %s still exists after Remove", b.NetNS)
	}
	if _, err := net.InterfaceByName(b.HostIf); err == nil {
		t.Errorf("veth %s still exists after Remove", b.HostIf)
	}
}

func TestTopologiesDoNotCollide(t *testing.T) {
	t1 := netns.New(t)
	t2 := netns.New(t)
	if t1.Subnet == t2.Subnet {
		t.Fatalf("two topologies share %s", t1.Subnet)
	}
	p1 := t1.AddPod(t, netns.PodConfig{Name: "x"})
	p2 := t2.AddPod(t, netns.PodConfig{Name: "x"})
	if p1.NetNS == p2.NetNS || p1.HostIf == p2.HostIf {
		t.Fatalf("names collide: %s/%s %s/%s", p1.NetNS, p2.NetNS, p1.HostIf, p2.HostIf)
	}
	if err := t1.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p1.NetNSPath); !os.IsNotExist(err) {
		t.Errorf("netns %s survives Close", p1.NetNS)
	}
}

func TestCgroups(t *testing.T) {
	topo := netns.New(t)
	if netns.CgroupRoot() == "" {
		t.Skip("no cgroup v2 hierarchy")
	}
	p := topo.AddPod(t, netns.PodConfig{Name: "c"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := p.Run(ctx, "cat", "/proc/self/cgroup")
	if err != nil || !strings.Contains(out, "0::/"+filepath.Base(p.Cgroup.Path)) {
		t.Fatalf("pod process cgroup = %q, %v; want %s", out, err, p.Cgroup.Path)
	}
	cg, err := topo.AddCgroup("proxy")
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := cg.Command(ctx, "cat", "/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	b, err := cmd.Output()
	if err != nil || !strings.Contains(string(b), filepath.Base(cg.Path)) {
		t.Fatalf("host workload cgroup = %q, %v", b, err)
	}
	if err := topo.Close(); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{p.Cgroup.Path, cg.Path} {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("cgroup %s survives Close", path)
		}
	}
}

func TestIPv6(t *testing.T) {
	topo := netns.New(t)
	a := topo.AddPod(t, netns.PodConfig{Name: "a", IPv6: true})
	b := topo.AddPod(t, netns.PodConfig{Name: "b", IPv6: true})
	if !a.IPv6.Is6() || a.IPv6 == b.IPv6 {
		t.Fatalf("IPv6 addresses %v %v", a.IPv6, b.IPv6)
	}
	ln, err := b.Listen("tcp6", "[::]:80")
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
			fmt.Fprintf(c, "hi %s", c.RemoteAddr())
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := a.Dial(ctx, "tcp6", net.JoinHostPort(b.IPv6.String(), "80"))
	if err != nil {
		t.Fatalf("dial over IPv6: %v", err)
	}
	body, _ := io.ReadAll(c)
	c.Close()
	if !strings.Contains(string(body), a.IPv6.String()) {
		t.Fatalf("got %q; want the greeting to name %s", body, a.IPv6)
	}
}

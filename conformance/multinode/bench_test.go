package multinode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/internal/testenv"
)

// BenchmarkOffNodeIngress measures new connections per second from the
// world namespace to a pod of a node (a namespace with a native device on
// the underlay), each connection answered and closed:
//   - direct: no proxy, the pod answers (the path without L7);
//   - ward: the datapath's ingress redirect to a transparent listener of
//     the node (to_pod's hairpin, from_netdev on the native device);
//   - iptables-tproxy: the same job done by an iptables TPROXY rule on
//     the native device (mangle PREROUTING) and the same listener.
//
// The client runs on one thread locked in the world namespace, so the
// loop counts b.N itself (b.Loop needs the benchmark's goroutine). The
// client closes first, so the servers keep no TIME_WAIT sockets that a
// reused client port would meet.
func BenchmarkOffNodeIngress(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.RequireCommand(b, "iptables")
	topo := netns.NewNode(b)
	pod := topo.AddPod(b, netns.PodConfig{Name: "server", Routes: []netip.Prefix{underlayNet}})
	host := topo.Host()
	under := topo.NewNamespace(b, "under")
	if _, err := netns.Connect(host, under, "n0", netip.MustParsePrefix("172.31.0.1/24")); err != nil {
		b.Fatal(err)
	}
	// Each run gets a client namespace of its own: the TIME_WAIT sockets
	// a run leaves (the client closes first) slow the next one's port
	// allocation, whichever path it measures.
	worlds := 0
	newWorld := func(b *testing.B) *netns.Namespace {
		worlds++
		world := topo.NewNamespace(b, fmt.Sprintf("world%d", worlds))
		if _, err := netns.Connect(world, under, fmt.Sprintf("w%d", worlds), netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 31, 0, byte(100 + worlds%100)}), 24)); err != nil {
			b.Fatal(err)
		}
		if err := world.IP("route", "add", topo.Subnet.String(), "via", "172.31.0.1"); err != nil {
			b.Fatal(err)
		}
		return world
	}
	serve := func(ln net.Listener, what string) {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					// The client closes first: the TIME_WAIT socket is
					// the client's, none is left on the server side for
					// a later connection that reuses the client's port
					// (bpf/redirect/README.md: the proxy's TIME_WAIT).
					c.Write([]byte(what))
					io.Copy(io.Discard, c)
					c.Close()
				}()
			}
		}()
	}
	pln, err := pod.Listen("tcp4", ":80")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pln.Close() })
	serve(pln, "pod")
	var xln net.Listener
	if err := host.Do(func() (err error) {
		xln, err = (&net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1) })
			return errors.Join(err, serr)
		}}).Listen(context.Background(), "tcp4", "0.0.0.0:0")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { xln.Close() })
	serve(xln, "proxy")
	proxyPort := xln.Addr().(*net.TCPAddr).Port
	target := net.JoinHostPort(pod.IP.String(), "80")

	run := func(b *testing.B, want string, onFail func()) {
		world := newWorld(b)
		buf := make([]byte, 16)
		b.ResetTimer()
		start := time.Now()
		err := world.Do(func() error {
			for i := 0; i < b.N; i++ {
				c, err := net.DialTimeout("tcp4", target, 5*time.Second)
				if err != nil {
					return fmt.Errorf("connection %d: %w", i, err)
				}
				n, err := io.ReadFull(c, buf[:len(want)])
				c.Close()
				if err != nil || string(buf[:n]) != want {
					return fmt.Errorf("connection %d: read %q, %v; want %q", i, buf[:n], err, want)
				}
			}
			return nil
		})
		elapsed := time.Since(start)
		b.StopTimer()
		if err != nil {
			if onFail != nil {
				onFail()
			}
			b.Fatal(err)
		}
		b.ReportMetric(float64(b.N)/elapsed.Seconds(), "conn/s")
	}
	var undo func() error
	if err := host.Do(func() (err error) {
		undo, err = redirect.InstallProxyRouting(redirect.Routing{})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { host.Do(undo) })

	b.Run("direct", func(b *testing.B) { run(b, "pod", nil) })

	b.Run("ward", func(b *testing.B) {
		pin := b.TempDir()
		if err := unix.Mount("bpf", pin, "bpf", 0, "mode=0700"); err != nil {
			b.Fatal(err)
		}
		defer func() { redirect.Cleanup(pin); unix.Unmount(pin, unix.MNT_DETACH) }()
		var dp *redirect.Datapath
		err := host.Do(func() (err error) {
			if dp, err = redirect.Load(redirect.Config{PinDir: pin}); err != nil {
				return err
			}
			if err := dp.SetPolicy(1, []redirect.PolicyEntry{{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Identity: redirect.IdentityWorld, Port: 80, Proto: redirect.ProtoTCP},
				Verdict: redirect.Redirect, ProxyPort: uint16(proxyPort)}}); err != nil {
				return err
			}
			if err := dp.AddEndpoint(redirect.Endpoint{ID: 1, IP: pod.IP, IfIndex: pod.HostIfIndex, Identity: 5000, EnforceIngress: true}); err != nil {
				return err
			}
			eth0, err := net.InterfaceByName("eth0")
			if err != nil {
				return err
			}
			return dp.AttachDevice(eth0.Index)
		})
		if err != nil {
			b.Fatal(err)
		}
		defer func() { host.Do(func() error { return errors.Join(dp.RemoveEndpoint(1), dp.Close()) }) }()
		run(b, "proxy", func() {
			cs, err := dp.Counters()
			b.Logf("datapath counters: %+v %v", cs, err)
		})
	})

	b.Run("iptables-tproxy", func(b *testing.B) {
		rule := []string{"PREROUTING", "-i", "eth0", "-p", "tcp", "-d", pod.IP.String(), "--dport", "80",
			"-j", "TPROXY", "--on-port", strconv.Itoa(proxyPort), "--tproxy-mark", "0xd00/0xf00"}
		ctx := context.Background()
		if out, err := host.Run(ctx, "iptables", append([]string{"-t", "mangle", "-A"}, rule...)...); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
		defer host.Run(ctx, "iptables", append([]string{"-t", "mangle", "-D"}, rule...)...)
		run(b, "proxy", nil)
	})
}

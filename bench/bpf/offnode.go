package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/conformance/netns"
)

// The off-node arms: a client in a "world" namespace reaches a pod of a
// node (a namespace of its own with a native device "eth0" on an
// underlay bridge) on port 80, whose ingress needs the proxy:
//
//	offnode-direct  nothing attached: the client reaches the pod's server
//	offnode-ward    ward's off-node redirect: to_pod marks the flow and
//	                hairpins it to the veth's ingress, where from_pod
//	                assigns it to the proxy; from_netdev on eth0 assigns
//	                the flow's later packets (bpf/redirect/README.md)
//	offnode-tproxy  no BPF: iptables TPROXY on eth0 to the same proxy
//
// The proxy is a transparent listener in the node's namespace that
// answers itself (the same job in both redirected arms). Metric: new
// connections/s from the world (2 workers: connect, 1-byte echo, close
// with RST) and the benchmark process's CPU time per connection (client,
// proxy and server threads, the kernel's work in their context included).

var underlayNet = netip.MustParsePrefix("172.31.0.0/24")

type offResult struct {
	arm         string
	connsPerSec float64
	cpuPerConn  time.Duration
}

func runOffNode(dur time.Duration, rounds int) (err error) {
	topo, err := netns.CreateNode()
	if err != nil {
		return err
	}
	host := topo.Host()
	defer func() { err = errors.Join(err, topo.Close(), host.Close()) }()
	atInterrupt(func() { topo.Close(); host.Close() })
	pod, err := topo.Add(netns.PodConfig{Name: "server", Routes: []netip.Prefix{underlayNet}})
	if err != nil {
		return err
	}
	var nss []*netns.Namespace
	defer func() {
		for _, ns := range nss {
			err = errors.Join(err, ns.Close())
		}
	}()
	newNS := func(name string) (*netns.Namespace, error) {
		ns, err := topo.CreateNamespace(name)
		if err == nil {
			nss = append(nss, ns)
			atInterrupt(func() { ns.Close() })
		}
		return ns, err
	}
	under, err := newNS("under")
	if err != nil {
		return err
	}
	if _, err := netns.Connect(host, under, "n0", netip.MustParsePrefix("172.31.0.1/24")); err != nil {
		return err
	}
	world, err := newNS("world")
	if err != nil {
		return err
	}
	if _, err := netns.Connect(world, under, "w0", netip.MustParsePrefix("172.31.0.100/24")); err != nil {
		return err
	}
	if err := world.IP("route", "add", topo.Subnet.String(), "via", "172.31.0.1"); err != nil {
		return err
	}
	if err := world.Sysctl("net/ipv4/ip_local_port_range", "10000 65000"); err != nil {
		return err
	}

	pln, err := pod.Listen("tcp4", ":80")
	if err != nil {
		return err
	}
	defer pln.Close()
	var podAccepted, proxyAccepted atomic.Int64
	go echoCounting(pln, &podAccepted)
	var xln net.Listener
	if err := host.Do(func() (err error) {
		xln, err = (&net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1) })
			return errors.Join(err, serr)
		}}).Listen(context.Background(), "tcp4", "0.0.0.0:0")
		return err
	}); err != nil {
		return fmt.Errorf("proxy listen: %w", err)
	}
	defer xln.Close()
	go echoCounting(xln, &proxyAccepted)
	proxyPort := uint16(xln.Addr().(*net.TCPAddr).Port)

	var undo func() error
	if err := host.Do(func() (err error) {
		undo, err = redirect.InstallProxyRouting(redirect.Routing{})
		return err
	}); err != nil {
		return err
	}
	defer host.Do(undo)

	pin, err := os.MkdirTemp("", "ward-bench-offnode-")
	if err != nil {
		return err
	}
	defer os.Remove(pin)
	if err := unix.Mount("bpf", pin, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs: %w", err)
	}
	defer unix.Unmount(pin, unix.MNT_DETACH)
	defer redirect.Cleanup(pin)
	atInterrupt(func() { redirect.Cleanup(pin); unix.Unmount(pin, unix.MNT_DETACH); os.Remove(pin) })
	var dp *redirect.Datapath
	var eth0 int
	if err := host.Do(func() (err error) {
		if dp, err = redirect.Load(redirect.Config{PinDir: pin}); err != nil {
			return err
		}
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		eth0 = ifc.Index
		return nil
	}); err != nil {
		return err
	}
	defer host.Do(dp.Close)

	rule := []string{"PREROUTING", "-i", "eth0", "-p", "tcp", "-d", pod.IP.String(), "--dport", "80",
		"-j", "TPROXY", "--on-port", strconv.Itoa(int(proxyPort)),
		"--tproxy-mark", fmt.Sprintf("%#x/%#x", redirect.MarkToProxy, redirect.MarkMask)}
	iptables := func(op string) error {
		if out, err := host.Run(context.Background(), "iptables", append([]string{"-w", "-t", "mangle", op}, rule...)...); err != nil {
			return fmt.Errorf("iptables %s TPROXY: %w: %s", op, err, out)
		}
		return nil
	}
	atInterrupt(func() { iptables("-D") })
	arms := []struct {
		name            string
		setup, teardown func() error
		want            *atomic.Int64 // who must answer
	}{
		{name: "offnode-direct", want: &podAccepted},
		{name: "offnode-ward", want: &proxyAccepted,
			setup: func() error {
				return host.Do(func() error {
					// Again each round: RemoveEndpoint deletes the policy.
					if err := dp.SetPolicy(1, []redirect.PolicyEntry{{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Identity: redirect.IdentityWorld, Port: 80, Proto: redirect.ProtoTCP},
						Verdict: redirect.Redirect, ProxyPort: proxyPort}}); err != nil {
						return err
					}
					if err := dp.AddEndpoint(redirect.Endpoint{ID: 1, IP: pod.IP, IfIndex: pod.HostIfIndex, Identity: idServer, EnforceIngress: true}); err != nil {
						return err
					}
					return dp.AttachDevice(eth0)
				})
			},
			teardown: func() error {
				return host.Do(func() error { return errors.Join(dp.DetachDevice(eth0), dp.RemoveEndpoint(1)) })
			}},
		{name: "offnode-tproxy", want: &proxyAccepted, setup: func() error { return iptables("-A") }, teardown: func() error { return iptables("-D") }},
	}
	target := net.JoinHostPort(pod.IP.String(), "80")
	all := map[string][]offResult{}
	for round := range rounds {
		for _, arm := range arms {
			fmt.Fprintf(os.Stderr, "round %d/%d arm %s\n", round+1, rounds, arm.name)
			if arm.setup != nil {
				if err := arm.setup(); err != nil {
					return fmt.Errorf("%s setup: %w", arm.name, err)
				}
			}
			before := arm.want.Load()
			r, err := worldConnRate(world, target, dur)
			r.arm = arm.name
			if arm.teardown != nil {
				err = errors.Join(err, arm.teardown())
			}
			if err != nil {
				return fmt.Errorf("%s: %w", arm.name, err)
			}
			if got := arm.want.Load() - before; got < int64(r.connsPerSec*dur.Seconds()/2) {
				return fmt.Errorf("%s: the expected server accepted %d connections of %.0f", arm.name, got, r.connsPerSec*dur.Seconds())
			}
			all[arm.name] = append(all[arm.name], r)
		}
	}
	var rs []offResult
	for _, arm := range arms {
		rs = append(rs, medianOff(all[arm.name]))
	}
	printOffTable(rs)
	return nil
}

// echoCounting echoes every accepted connection, counting them.
func echoCounting(ln net.Listener, n *atomic.Int64) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		n.Add(1)
		go func() {
			defer c.Close()
			buf := make([]byte, 1)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
	}
}

// worldConnRate is connRate from a bare namespace, with the process's CPU
// time per connection.
func worldConnRate(ns *netns.Namespace, addr string, dur time.Duration) (offResult, error) {
	var n atomic.Int64
	var firstErr error
	var mu sync.Mutex
	cpu0 := processCPU()
	start := time.Now()
	deadline := start.Add(dur)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			err := ns.Do(func() error {
				buf := make([]byte, 1)
				for time.Now().Before(deadline) {
					c, err := net.DialTimeout("tcp4", addr, 5*time.Second)
					if err != nil {
						return err
					}
					_, err = c.Write(buf)
					if err == nil {
						_, err = io.ReadFull(c, buf)
					}
					c.(*net.TCPConn).SetLinger(0)
					c.Close()
					if err != nil {
						return err
					}
					n.Add(1)
				}
				return nil
			})
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := processCPU() - cpu0
	if firstErr != nil {
		return offResult{}, fmt.Errorf("conn/s: %w", firstErr)
	}
	r := offResult{connsPerSec: float64(n.Load()) / elapsed.Seconds()}
	if n.Load() > 0 {
		r.cpuPerConn = cpu / time.Duration(n.Load())
	}
	return r, nil
}

// processCPU is this process's user+system CPU time (every thread).
func processCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// childrenCPU is the user+system CPU time of the waited-for children.
func childrenCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_CHILDREN, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func medianOff(rs []offResult) offResult {
	out := offResult{arm: rs[0].arm}
	c := make([]float64, len(rs))
	p := make([]float64, len(rs))
	for i, r := range rs {
		c[i], p[i] = r.connsPerSec, float64(r.cpuPerConn)
	}
	slices.Sort(c)
	slices.Sort(p)
	out.connsPerSec, out.cpuPerConn = c[len(c)/2], time.Duration(p[len(p)/2])
	return out
}

func printOffTable(rs []offResult) {
	var direct, tproxy offResult
	for _, r := range rs {
		switch r.arm {
		case "offnode-direct":
			direct = r
		case "offnode-tproxy":
			tproxy = r
		}
	}
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "off-node arm\tconn/s\tvs direct\tvs tproxy\tCPU µs/conn\t")
	for _, r := range rs {
		vsT := "-"
		if r.arm != "offnode-direct" && tproxy.connsPerSec > 0 {
			vsT = fmt.Sprintf("%.2f", r.connsPerSec/tproxy.connsPerSec)
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.2f\t%s\t%.1f\t\n", r.arm, r.connsPerSec, r.connsPerSec/direct.connsPerSec, vsT, float64(r.cpuPerConn.Nanoseconds())/1e3)
	}
	tw.Flush()
}

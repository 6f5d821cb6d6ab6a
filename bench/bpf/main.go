// Command bpf benchmarks ward's tc datapath between two pod namespaces
// (conformance/netns) with its baselines in the same run:
//
//	no-bpf, no socket mark   nothing attached, the proxy routing's
//	                          nftables socket mark removed
//	no-bpf        nothing attached
//	not-selected  programs attached on both veths, both directions enforced,
//	              the flow allowed by policy (not redirected), 10k ipcache entries
//	sk_assign     the flow redirected by the datapath (bpf_sk_assign) to a Go
//	              transparent proxy in the host namespace that splices to the server
//	tproxy        no BPF; the same proxy fed by iptables TPROXY on the client veth
//
// Metrics per arm: iperf3 TCP throughput and the CPU seconds per GB it
// cost (both iperf3 processes and this one), new connections/s (connect,
// 1-byte echo, close with RST) and this process's CPU time per connection,
// 1-byte ping-pong round-trip p50/p99 over one connection, and for BPF
// arms run_time_ns/run_cnt of each program (BPF stats enabled through
// BPF_ENABLE_STATS while the run lasts).
//
// Then the socket-level arms (the workload<->proxy hop) and the off-node
// arms (offnode.go): a client outside the node reaching a pod whose
// ingress needs the proxy, through ward's hairpin + from_netdev or
// iptables TPROXY on the node's native device.
//
// Run as root through bench/bpf/run.sh.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/conformance/netns"
)

const (
	idClient    = 5001
	idServer    = 5002
	portIperf   = 5201
	portConn    = 7000
	portLatency = 7001
)

type result struct {
	arm          string
	gbps         float64
	connsPerSec  float64
	p50, p99     time.Duration
	fromNS, toNS float64 // per-run ns; 0 when no program ran
	// cpuPerConn is the process's CPU time per connection of the conn/s
	// phase (client, server and proxy threads, the kernel's work in their
	// context included); cpuPerGB the CPU seconds per GB moved by iperf3
	// (both iperf3 processes and this process, the proxy's work).
	cpuPerConn time.Duration
	cpuPerGB   float64
}

// onSignal holds undo steps run (last first) if the benchmark is
// interrupted, so no namespace, rule or pin outlives it.
var (
	onSignalMu sync.Mutex
	onSignal   []func()
)

func atInterrupt(f func()) {
	onSignalMu.Lock()
	onSignal = append(onSignal, f)
	onSignalMu.Unlock()
}

func main() {
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		<-sigc
		onSignalMu.Lock()
		for i := len(onSignal) - 1; i >= 0; i-- {
			onSignal[i]()
		}
		os.Exit(130)
	}()
	dur := flag.Duration("duration", 5*time.Second, "length of each throughput and conn/s measurement")
	pings := flag.Int("pings", 20000, "round trips per latency measurement")
	ipcacheN := flag.Int("ipcache", 10000, "extra ipcache entries in the BPF arms")
	rounds := flag.Int("rounds", 3, "rounds of all arms, interleaved; the table shows per-arm medians")
	offNode := flag.Bool("offnode", true, "also run the off-node arms (world -> node's native device -> pod, redirected by ward or iptables TPROXY)")
	role := flag.String("role", "", "internal: echo | ping (child processes of the socket-level arms)")
	target := flag.String("target", "", "internal: ping target")
	flag.Parse()
	var err error
	switch *role {
	case "echo":
		err = roleEcho()
	case "ping":
		err = rolePing(*target, *pings)
	default:
		err = run(*dur, *pings, *ipcacheN, *rounds)
		if err == nil && *offNode {
			err = runOffNode(*dur, *rounds)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/bpf:", err)
		os.Exit(1)
	}
}

func run(dur time.Duration, pings, ipcacheN, rounds int) (err error) {
	topo, err := netns.Create()
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, topo.Close()) }()
	atInterrupt(func() { topo.Close() })
	client, err := topo.Add(netns.PodConfig{Name: "client"})
	if err != nil {
		return err
	}
	server, err := topo.Add(netns.PodConfig{Name: "server"})
	if err != nil {
		return err
	}
	for _, p := range []*netns.Pod{client, server} {
		// Pod-local sysctls only.
		if _, err := p.Run(context.Background(), "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=10000 65000"); err != nil {
			return err
		}
	}

	pin, err := os.MkdirTemp("", "ward-bench-bpffs-")
	if err != nil {
		return err
	}
	defer os.Remove(pin)
	if err := unix.Mount("bpf", pin, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs: %w", err)
	}
	defer unix.Unmount(pin, unix.MNT_DETACH)
	defer redirect.Cleanup(pin)
	atInterrupt(func() { os.Remove(pin) })
	atInterrupt(func() { unix.Unmount(pin, unix.MNT_DETACH) })
	atInterrupt(func() { redirect.Cleanup(pin) })
	dp, err := redirect.Load(redirect.Config{PinDir: pin})
	if err != nil {
		return err
	}
	defer func() { dp.Close() }()
	s := int(topo.Subnet.Addr().As4()[2])
	routing := redirect.Routing{Table: 21000 + s, Priority: 9100}
	undo, err := redirect.InstallProxyRouting(routing)
	if err != nil {
		return err
	}
	defer undo()
	atInterrupt(func() { undo() })
	statsOff, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		return fmt.Errorf("enable bpf stats: %w", err)
	}
	defer statsOff.Close()

	// Servers in the server pod.
	iperf := server.Command(context.Background(), "iperf3", "-s", "-p", strconv.Itoa(portIperf))
	if err := iperf.Start(); err != nil {
		return fmt.Errorf("iperf3 -s: %w", err)
	}
	defer func() { iperf.Cancel(); iperf.Wait() }()
	atInterrupt(func() { iperf.Cancel() })
	for _, port := range []int{portConn, portLatency} {
		ln, err := server.Listen("tcp4", ":"+strconv.Itoa(port))
		if err != nil {
			return err
		}
		defer ln.Close()
		go echoServer(ln)
	}
	// The transparent proxy in the host namespace.
	proxy, err := newProxy()
	if err != nil {
		return err
	}
	defer proxy.Close()

	b := &bench{client: client, server: server, dur: dur, pings: pings, dp: dp, iperfPID: iperf.Process.Pid}
	time.Sleep(300 * time.Millisecond) // iperf3 -s startup

	for i := range ipcacheN {
		pfx := netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16 + byte(i>>16), byte(i >> 8), byte(i)}), 32)
		if err := dp.IPCache().Upsert(pfx, uint32(100000+rand.IntN(1000))); err != nil {
			return err
		}
	}
	serverPolicy := func(v redirect.Verdict) []redirect.PolicyEntry {
		var es []redirect.PolicyEntry
		for _, p := range []uint16{portIperf, portConn, portLatency} {
			e := redirect.PolicyEntry{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Identity: idClient, Port: p, Proto: redirect.ProtoTCP}, Verdict: v}
			if v == redirect.Redirect {
				e.ProxyPort = proxy.port
			}
			es = append(es, e)
		}
		return es
	}
	attach := func(v redirect.Verdict) error {
		if err := dp.SetPolicy(1, []redirect.PolicyEntry{{PolicyKey: redirect.PolicyKey{Direction: redirect.Egress, Identity: idServer, Proto: redirect.ProtoTCP}, Verdict: redirect.Allow}}); err != nil {
			return err
		}
		if err := dp.SetPolicy(2, serverPolicy(v)); err != nil {
			return err
		}
		if err := dp.AddEndpoint(redirect.Endpoint{ID: 1, IP: client.IP, IfIndex: client.HostIfIndex, Identity: idClient, EnforceEgress: true, EnforceIngress: true}); err != nil {
			return err
		}
		return dp.AddEndpoint(redirect.Endpoint{ID: 2, IP: server.IP, IfIndex: server.HostIfIndex, Identity: idServer, EnforceEgress: true, EnforceIngress: true})
	}
	detach := func() error {
		return errors.Join(dp.RemoveEndpoint(1), dp.RemoveEndpoint(2))
	}
	rule := []string{"PREROUTING", "-i", client.HostIf, "-p", "tcp", "-m", "multiport", "--dports",
		fmt.Sprintf("%d,%d,%d", portIperf, portConn, portLatency),
		"-j", "TPROXY", "--on-port", strconv.Itoa(int(proxy.port)), "--on-ip", "0.0.0.0",
		"--tproxy-mark", fmt.Sprintf("%#x/%#x", redirect.MarkToProxy, redirect.MarkMask)}
	atInterrupt(func() { exec.Command("iptables", append([]string{"-w", "-t", "mangle", "-D"}, rule...)...).Run() })
	iptables := func(op string) error {
		if out, err := exec.Command("iptables", append([]string{"-w", "-t", "mangle", op}, rule...)...).CombinedOutput(); err != nil {
			return fmt.Errorf("iptables %s TPROXY: %w: %s", op, err, out)
		}
		return nil
	}
	arms := []struct {
		name       string
		bpf, proxy bool
		setup      func() error
		teardown   func() error
	}{
		// The proxy routing's nftables socket mark (InstallProxySocketMark)
		// is in place in every other arm, as wardd installs it.
		{name: "no-bpf, no socket mark", setup: func() error { redirect.RemoveProxySocketMark(routing.Table); return detach() },
			teardown: func() error { _, err := redirect.InstallProxySocketMark(routing.Table); return err }},
		{name: "no-bpf", setup: detach},
		{name: "not-selected", bpf: true, setup: func() error { return attach(redirect.Allow) }, teardown: detach},
		{name: "sk_assign", bpf: true, proxy: true, setup: func() error { return attach(redirect.Redirect) }, teardown: detach},
		{name: "tproxy", proxy: true, setup: func() error { return iptables("-A") }, teardown: func() error { return iptables("-D") }},
	}
	all := map[string][]result{}
	for round := range rounds {
		for _, arm := range arms {
			fmt.Fprintf(os.Stderr, "round %d/%d arm %s\n", round+1, rounds, arm.name)
			if err := arm.setup(); err != nil {
				return fmt.Errorf("%s setup: %w", arm.name, err)
			}
			before := proxy.accepted.Load()
			r, err := b.measure(arm.name, arm.bpf)
			if arm.teardown != nil {
				err = errors.Join(err, arm.teardown())
			}
			if err != nil {
				return fmt.Errorf("%s: %w", arm.name, err)
			}
			if arm.proxy && proxy.accepted.Load() == before {
				return fmt.Errorf("%s: the proxy accepted nothing", arm.name)
			}
			all[arm.name] = append(all[arm.name], r)
		}
	}
	var results []result
	for _, arm := range arms {
		results = append(results, median(all[arm.name]))
	}
	printTable(results)

	// Socket-level mode: the local hop between a workload and the proxy,
	// with and without the sockhash/sk_msg shortcut.
	if err := dp.Close(); err != nil {
		return err
	}
	sres, err := sockLatency(topo, server, pin, pings, rounds, &dp)
	if err != nil {
		return fmt.Errorf("socket-level arms: %w", err)
	}
	printSockTable(sres)
	return nil
}

type sockResult struct {
	arm      string
	p50, p99 time.Duration
}

// sockLatency runs the ping-pong client as a child process in a workload
// cgroup (socket-level mode: connect() redirected to the proxy) against an
// echoing proxy child in the proxy cgroup, reloading the datapath (maps
// and links kept, as on a wardd restart) to switch the shortcut.
func sockLatency(topo *netns.Topology, server *netns.Pod, pin string, pings, rounds int, dpp **redirect.Datapath) ([]sockResult, error) {
	if netns.CgroupRoot() == "" {
		return nil, errors.New("no cgroup v2 hierarchy")
	}
	wl, err := topo.AddCgroup("bench-workload")
	if err != nil {
		return nil, err
	}
	pcg, err := topo.AddCgroup("bench-proxy")
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	echo, err := pcg.Command(context.Background(), self, "-role=echo")
	if err != nil {
		return nil, err
	}
	stdout, err := echo.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := echo.Start(); err != nil {
		return nil, err
	}
	defer func() { echo.Process.Kill(); echo.Wait() }()
	atInterrupt(func() { echo.Process.Kill() })
	var echoPort uint16
	if _, err := fmt.Fscan(stdout, &echoPort); err != nil {
		return nil, fmt.Errorf("echo proxy: %w", err)
	}
	const wlID = 50
	target := net.JoinHostPort(server.IP.String(), strconv.Itoa(portLatency))
	all := map[string][]sockResult{}
	arms := []struct {
		name     string
		shortcut bool
	}{{"sock local hop", false}, {"sock local hop + sk_msg", true}}
	for round := range rounds {
		for _, arm := range arms {
			fmt.Fprintf(os.Stderr, "round %d/%d arm %s\n", round+1, rounds, arm.name)
			dp, err := redirect.Load(redirect.Config{PinDir: pin, SockShortcut: arm.shortcut})
			if err != nil {
				return nil, err
			}
			*dpp = dp
			if err := dp.IPCache().Upsert(netip.PrefixFrom(server.IP, 32), idServer); err != nil {
				return nil, err
			}
			if err := dp.SetPolicy(wlID, []redirect.PolicyEntry{{PolicyKey: redirect.PolicyKey{Direction: redirect.Egress, Identity: idServer, Port: portLatency, Proto: redirect.ProtoTCP}, Verdict: redirect.Redirect, ProxyPort: echoPort}}); err != nil {
				return nil, err
			}
			if err := dp.AddCgroupEndpoint(redirect.CgroupEndpoint{ID: wlID, CgroupPath: wl.Path, Identity: idClient, EnforceEgress: true}); err != nil {
				return nil, err
			}
			if err := dp.AttachProxyCgroup(pcg.Path); err != nil {
				return nil, err
			}
			cmd, err := wl.Command(context.Background(), self, "-role=ping", "-target="+target, "-pings="+strconv.Itoa(pings))
			if err != nil {
				return nil, err
			}
			out, err := cmd.Output()
			if err != nil {
				return nil, fmt.Errorf("ping child: %w", err)
			}
			var p50, p99 int64
			if _, err := fmt.Sscan(string(out), &p50, &p99); err != nil {
				return nil, fmt.Errorf("ping child said %q", out)
			}
			all[arm.name] = append(all[arm.name], sockResult{arm: arm.name, p50: time.Duration(p50), p99: time.Duration(p99)})
			if err := errors.Join(dp.RemoveCgroupEndpoint(wlID), dp.DetachProxyCgroup(pcg.Path), dp.Close()); err != nil {
				return nil, err
			}
		}
	}
	var out []sockResult
	for _, arm := range arms {
		rs := all[arm.name]
		p50s := make([]time.Duration, len(rs))
		p99s := make([]time.Duration, len(rs))
		for i, r := range rs {
			p50s[i], p99s[i] = r.p50, r.p99
		}
		slices.Sort(p50s)
		slices.Sort(p99s)
		out = append(out, sockResult{arm: arm.name, p50: p50s[len(rs)/2], p99: p99s[len(rs)/2]})
	}
	*dpp, err = redirect.Load(redirect.Config{PinDir: pin})
	return out, err
}

func printSockTable(rs []sockResult) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\nsocket-level arm\tRTT p50 µs\tRTT p99 µs\tp50 vs no shortcut\t")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.2f\t\n", r.arm, float64(r.p50.Nanoseconds())/1e3, float64(r.p99.Nanoseconds())/1e3,
			float64(r.p50)/float64(rs[0].p50))
	}
	tw.Flush()
}

// roleEcho is the proxy child: echo on 127.0.0.1, port on stdout.
func roleEcho() error {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	echoServer(ln)
	return nil
}

// rolePing is the workload child: 1-byte ping-pong, prints p50 p99 in ns.
func rolePing(target string, pings int) error {
	c, err := net.Dial("tcp4", target)
	if err != nil {
		return err
	}
	defer c.Close()
	c.(*net.TCPConn).SetNoDelay(true)
	buf := make([]byte, 1)
	rtts := make([]time.Duration, 0, pings)
	for range pings {
		t := time.Now()
		if _, err := c.Write(buf); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		rtts = append(rtts, time.Since(t))
	}
	slices.Sort(rtts)
	fmt.Println(int64(rtts[len(rtts)/2]), int64(rtts[len(rtts)*99/100]))
	return nil
}

type bench struct {
	client, server *netns.Pod
	dur            time.Duration
	pings          int
	dp             *redirect.Datapath
	iperfPID       int // iperf3 -s
}

func (b *bench) measure(arm string, bpf bool) (result, error) {
	r := result{arm: arm}
	var f0, t0 redirect.ProgramStats
	if bpf {
		var err error
		if f0, t0, err = b.dp.Stats(); err != nil {
			return r, err
		}
	}
	var err error
	if r.gbps, r.cpuPerGB, err = b.iperf(); err != nil {
		return r, err
	}
	if r.connsPerSec, r.cpuPerConn, err = b.connRate(); err != nil {
		return r, err
	}
	if r.p50, r.p99, err = b.latency(); err != nil {
		return r, err
	}
	if bpf {
		f1, t1, err := b.dp.Stats()
		if err != nil {
			return r, err
		}
		if n := f1.RunCount - f0.RunCount; n > 0 {
			r.fromNS = float64(f1.RunTimeNS-f0.RunTimeNS) / float64(n)
		}
		if n := t1.RunCount - t0.RunCount; n > 0 {
			r.toNS = float64(t1.RunTimeNS-t0.RunTimeNS) / float64(n)
		}
	}
	return r, nil
}

func (b *bench) iperf() (gbps, cpuPerGB float64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), b.dur+30*time.Second)
	defer cancel()
	self0, children0, server0 := processCPU(), childrenCPU(), pidCPU(b.iperfPID)
	out, err := b.client.Command(ctx, "iperf3", "-c", b.server.IP.String(), "-p", strconv.Itoa(portIperf),
		"-t", strconv.Itoa(int(b.dur.Seconds())), "-J").Output()
	if err != nil {
		return 0, 0, fmt.Errorf("iperf3 -c: %w: %s", err, out)
	}
	cpu := processCPU() - self0 + childrenCPU() - children0 + pidCPU(b.iperfPID) - server0
	var rep struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				Bytes         float64 `json:"bytes"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return 0, 0, fmt.Errorf("iperf3 json: %w", err)
	}
	if rep.End.SumReceived.Bytes > 0 {
		cpuPerGB = cpu.Seconds() / (rep.End.SumReceived.Bytes / 1e9)
	}
	return rep.End.SumReceived.BitsPerSecond / 1e9, cpuPerGB, nil
}

// pidCPU is a process's user+system CPU time from /proc/PID/stat (0 when
// it cannot be read).
func pidCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which may hold spaces and
	// parentheses: state is field 3, utime and stime fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(ut+st) * time.Second / clockTicks
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times (100 on Linux).
const clockTicks = 100

// connRate opens connections from the client pod for b.dur with two
// workers: connect, write 1 byte, read the echo, close with RST (no
// TIME_WAIT).
func (b *bench) connRate() (float64, time.Duration, error) {
	addr := net.JoinHostPort(b.server.IP.String(), strconv.Itoa(portConn))
	var n atomic.Int64
	var firstErr error
	var mu sync.Mutex
	cpu0 := processCPU()
	deadline := time.Now().Add(b.dur)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The whole loop runs on a thread inside the client pod's
			// namespace, so every socket is created there without a
			// setns per connection.
			err := b.client.Do(func() error {
				buf := make([]byte, 1)
				for time.Now().Before(deadline) {
					c, err := net.Dial("tcp4", addr)
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
		}()
	}
	start := time.Now()
	wg.Wait()
	cpu := processCPU() - cpu0
	if firstErr != nil {
		return 0, 0, fmt.Errorf("conn/s: %w", firstErr)
	}
	var perConn time.Duration
	if n.Load() > 0 {
		perConn = cpu / time.Duration(n.Load())
	}
	return float64(n.Load()) / time.Since(start).Seconds(), perConn, nil
}

func (b *bench) latency() (p50, p99 time.Duration, err error) {
	c, err := b.client.Dial(context.Background(), "tcp4", net.JoinHostPort(b.server.IP.String(), strconv.Itoa(portLatency)))
	if err != nil {
		return 0, 0, fmt.Errorf("latency dial: %w", err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetNoDelay(true)
	buf := make([]byte, 1)
	rtts := make([]time.Duration, 0, b.pings)
	for range b.pings {
		t := time.Now()
		if _, err := c.Write(buf); err != nil {
			return 0, 0, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return 0, 0, err
		}
		rtts = append(rtts, time.Since(t))
	}
	slices.Sort(rtts)
	return rtts[len(rtts)/2], rtts[len(rtts)*99/100], nil
}

func echoServer(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			// A read/write loop, not io.Copy: Go splices TCP to TCP,
			// and splice(2) reads the socket's receive queue directly,
			// missing data an sk_msg program put in the psock queue.
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

// proxy is a transparent TCP proxy in the host namespace: it connects to
// the accepted socket's local address (the original destination) with the
// ingress-proxy mark and splices both ways, as Envoy's original_dst
// cluster would.
type proxy struct {
	ln       net.Listener
	port     uint16
	accepted atomic.Int64
}

func newProxy() (*proxy, error) {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		})
		return errors.Join(err, serr)
	}}
	ln, err := lc.Listen(context.Background(), "tcp4", "0.0.0.0:0")
	if err != nil {
		return nil, fmt.Errorf("proxy listen: %w", err)
	}
	p := &proxy{ln: ln, port: uint16(ln.Addr().(*net.TCPAddr).Port)}
	go p.serve()
	return p, nil
}

func (p *proxy) Close() error { return p.ln.Close() }

func (p *proxy) serve() {
	d := net.Dialer{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, redirect.MarkProxyIngress)
		})
		return errors.Join(err, serr)
	}}
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		go func() {
			defer c.Close()
			up, err := d.Dial("tcp4", c.LocalAddr().String())
			if err != nil {
				return
			}
			defer func() {
				// No TIME_WAIT left in the host namespace.
				up.(*net.TCPConn).SetLinger(0)
				up.Close()
			}()
			done := make(chan struct{})
			go func() {
				io.Copy(up, c)
				up.(*net.TCPConn).CloseWrite()
				close(done)
			}()
			io.Copy(c, up)
			c.(*net.TCPConn).CloseWrite()
			<-done
		}()
	}
}

// median takes each metric's median over the rounds.
func median(rs []result) result {
	out := result{arm: rs[0].arm}
	pick := func(get func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = get(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	out.gbps = pick(func(r result) float64 { return r.gbps })
	out.connsPerSec = pick(func(r result) float64 { return r.connsPerSec })
	out.p50 = time.Duration(pick(func(r result) float64 { return float64(r.p50) }))
	out.p99 = time.Duration(pick(func(r result) float64 { return float64(r.p99) }))
	out.fromNS = pick(func(r result) float64 { return r.fromNS })
	out.toNS = pick(func(r result) float64 { return r.toNS })
	out.cpuPerConn = time.Duration(pick(func(r result) float64 { return float64(r.cpuPerConn) }))
	out.cpuPerGB = pick(func(r result) float64 { return r.cpuPerGB })
	return out
}

func printTable(rs []result) {
	base := rs[0]
	var tproxy result
	for _, r := range rs {
		if r.arm == "tproxy" {
			tproxy = r
		}
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "arm\tiperf3 Gbit/s\tvs no-bpf\tCPU s/GB\tconn/s\tvs no-bpf\tvs tproxy\tCPU µs/conn\tRTT p50 µs\tRTT p99 µs\tfrom_pod ns/run\tto_pod ns/run\t")
	for _, r := range rs {
		ns := func(v float64) string {
			if v == 0 {
				return "-"
			}
			return fmt.Sprintf("%.0f", v)
		}
		vsT := "-"
		if tproxy.connsPerSec > 0 && r.arm != "no-bpf" && r.arm != "not-selected" {
			vsT = fmt.Sprintf("%.2f", r.connsPerSec/tproxy.connsPerSec)
		}
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.2f\t%.0f\t%.2f\t%s\t%.1f\t%.1f\t%.1f\t%s\t%s\t\n", r.arm, r.gbps, r.gbps/base.gbps, r.cpuPerGB,
			r.connsPerSec, r.connsPerSec/base.connsPerSec, vsT, float64(r.cpuPerConn.Nanoseconds())/1e3,
			float64(r.p50.Nanoseconds())/1e3, float64(r.p99.Nanoseconds())/1e3, ns(r.fromNS), ns(r.toNS))
	}
	tw.Flush()
}

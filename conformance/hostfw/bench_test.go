package hostfw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/internal/testenv"
)

// TestHostFirewallThroughput (WARD_HOSTFW_BENCH=1, bench/hostfw/run.sh)
// measures iperf3 TCP throughput from an outside namespace to a server in
// a node's host namespace, across the node's native device, in
// interleaved rounds (median per arm):
//
//	no-bpf          nothing attached to the device
//	hostfw-idle     host_in/host_out attached, no host policy (the cost every
//	                node with hostFirewall.enabled pays; target >= 0.98x)
//	hostfw-enforced a host policy enforced in both directions that allows
//	                the flow (parse, ipcache, conntrack per packet)
//
// WARD_HOSTFW_BENCH_DURATION (default 5s) and WARD_HOSTFW_BENCH_ROUNDS
// (default 3) tune it.
func TestHostFirewallThroughput(t *testing.T) {
	if os.Getenv("WARD_HOSTFW_BENCH") == "" {
		t.Skip("benchmark: set WARD_HOSTFW_BENCH=1 (bench/hostfw/run.sh)")
	}
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "iperf3")
	dur, rounds := 5*time.Second, 3
	if v := os.Getenv("WARD_HOSTFW_BENCH_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatal(err)
		}
		dur = d
	}
	if v := os.Getenv("WARD_HOSTFW_BENCH_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatal(err)
		}
		rounds = n
	}
	topo := netns.NewNode(t)
	host := topo.Host()
	underlay := topo.NewNamespace(t, "under")
	outside := topo.NewNamespace(t, "out")
	if _, err := netns.Connect(host, underlay, "n0", netip.PrefixFrom(nodeAddr, 24)); err != nil {
		t.Fatal(err)
	}
	if _, err := netns.Connect(outside, underlay, "o0", netip.PrefixFrom(outsideAddr, 24)); err != nil {
		t.Fatal(err)
	}
	pin := t.TempDir()
	if err := unix.Mount("bpf", pin, "bpf", 0, "mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { redirect.Cleanup(pin); unix.Unmount(pin, unix.MNT_DETACH) })
	dp, err := redirect.Load(redirect.Config{PinDir: pin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	if err := dp.IPCache().Upsert(netip.PrefixFrom(nodeAddr, 32), redirect.IdentityHost); err != nil {
		t.Fatal(err)
	}
	var eth0 int
	if err := host.Do(func() error {
		ifc, err := net.InterfaceByName("eth0")
		if err == nil {
			eth0 = ifc.Index
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		t.Fatal(err)
	}
	defer stats.Close()

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	srv := host.Command(ctx, "iperf3", "-s", "-p", "5201")
	if err := host.Start(srv); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	time.Sleep(300 * time.Millisecond)

	iperf := func() float64 {
		t.Helper()
		out, err := outside.Run(ctx, "iperf3", "-c", nodeAddr.String(), "-p", "5201", "-t", strconv.Itoa(int(dur.Seconds())), "-J")
		if err != nil {
			t.Fatalf("iperf3: %v\n%s", err, out)
		}
		var rep struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatal(err)
		}
		return rep.End.SumReceived.BitsPerSecond / 1e9
	}
	allow := []redirect.PolicyEntry{
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Proto: redirect.ProtoTCP, Port: 5201}, Verdict: redirect.Allow},
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Egress, Proto: redirect.ProtoAny}, Verdict: redirect.Allow},
	}
	if err := dp.SetPolicy(redirect.HostEndpointID, allow); err != nil {
		t.Fatal(err)
	}
	arms := []struct {
		name  string
		setup func() error
	}{
		{"no-bpf", func() error { return dp.DetachHostFirewall(eth0) }},
		{"hostfw-idle", func() error {
			return host.Do(func() error {
				return errors.Join(dp.SetHost(redirect.HostEndpoint{}), dp.AttachHostFirewall(eth0))
			})
		}},
		{"hostfw-enforced", func() error {
			return host.Do(func() error {
				return errors.Join(dp.SetHost(redirect.HostEndpoint{EnforceIngress: true, EnforceEgress: true}), dp.AttachHostFirewall(eth0))
			})
		}},
	}
	type result struct {
		gbps      []float64
		inNS, out []float64
	}
	res := make([]result, len(arms))
	for range rounds {
		for i, a := range arms {
			if err := a.setup(); err != nil {
				t.Fatalf("%s: %v", a.name, err)
			}
			in0, out0, err := dp.HostStats()
			if err != nil {
				t.Fatal(err)
			}
			res[i].gbps = append(res[i].gbps, iperf())
			in1, out1, err := dp.HostStats()
			if err != nil {
				t.Fatal(err)
			}
			res[i].inNS = append(res[i].inNS, perRun(in0, in1))
			res[i].out = append(res[i].out, perRun(out0, out1))
		}
	}
	if n, err := counted0(pin); err == nil && n > 0 {
		t.Errorf("the allowed benchmark flow was dropped %d times", n)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "host firewall on the native device: iperf3 outside -> node host, %v x %d interleaved rounds, median\n", dur, rounds)
	tw := tabwriter.NewWriter(&sb, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "arm\tGbit/s\tvs no-bpf\thost_in ns/run\thost_out ns/run\t")
	base := median(res[0].gbps)
	for i, a := range arms {
		g := median(res[i].gbps)
		fmt.Fprintf(tw, "%s\t%.2f\t%.3f\t%.0f\t%.0f\t\n", a.name, g, g/base, median(res[i].inNS), median(res[i].out))
	}
	tw.Flush()
	t.Log("\n" + sb.String())
	if p := os.Getenv("WARD_HOSTFW_BENCH_OUT"); p != "" {
		if err := os.WriteFile(p, []byte(sb.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func perRun(a, b redirect.ProgramStats) float64 {
	if b.RunCount == a.RunCount {
		return 0
	}
	return float64(b.RunTimeNS-a.RunTimeNS) / float64(b.RunCount-a.RunCount)
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// counted0 is the host firewall's policy drops in the pinned datapath.
func counted0(pin string) (uint64, error) {
	cs, err := redirect.PinnedCounters(pin)
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, c := range cs {
		if c.Reason == redirect.ReasonPolicyDenied {
			n += c.Packets
		}
	}
	return n, nil
}

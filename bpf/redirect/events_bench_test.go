package redirect

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// TestFlowEventsCost measures what the flow events cost from_pod, per
// packet (BPF_PROG_TEST_RUN: the kernel's own timing, no syscall), with
// the events on and compiled out (Config.NoEvents), in interleaved rounds
// of the same run:
//   - established: a packet of an allowed flow (nothing is emitted);
//   - new allowed: the first packet of a new flow (two verdict events:
//     the source's egress and the destination's ingress), ring drained
//     between batches so every event is written;
//   - new denied: the first packet of a flow the destination's policy
//     drops, each to another port (every drop reported).
//
// Run by bench/bpf/events.sh (WARD_BENCH_EVENTS=1; WARD_BENCH_ROUNDS,
// WARD_BENCH_N).
func TestFlowEventsCost(t *testing.T) {
	if os.Getenv("WARD_BENCH_EVENTS") != "1" {
		t.Skip("a benchmark: WARD_BENCH_EVENTS=1 (bench/bpf/events.sh)")
	}
	rounds, n := envInt("WARD_BENCH_ROUNDS", 8), envInt("WARD_BENCH_N", 20000)
	on, client, server := eventEnv(t, Config{})
	off, _, _ := eventEnv(t, Config{NoEvents: true})
	cases := []string{"established", "new allowed", "new denied"}
	res := map[string]map[string][]float64{"on": {}, "off": {}}
	sport := uint16(1024)
	for r := range rounds {
		for _, arm := range []string{"on", "off"} {
			if r%2 == 1 { // alternate which arm goes first
				arm = map[string]string{"on": "off", "off": "on"}[arm]
			}
			d := on
			if arm == "off" {
				d = off
			}
			prog := d.objs.FromPod
			// established: one flow, n packets.
			est := tcpPacket(client, server, 40000, 80)
			if _, _, err := prog.Test(est); err != nil {
				t.Fatal(err)
			}
			_, dur, err := prog.Benchmark(est, n, nil)
			if err != nil {
				t.Fatal(err)
			}
			res[arm]["established"] = append(res[arm]["established"], float64(dur.Nanoseconds()))
			// new flows: n distinct source ports (and, denied, ports).
			var allowed, denied time.Duration
			for i := range n {
				sport++
				if sport < 1024 {
					sport = 1024
				}
				dur, err := runOnce(prog, tcpPacket(client, server, sport, 80))
				if err != nil {
					t.Fatal(err)
				}
				allowed += dur
				dur, err = runOnce(prog, tcpPacket(client, server, sport, uint16(10000+(r*n+i)%50000)))
				if err != nil {
					t.Fatal(err)
				}
				denied += dur
				if i%1000 == 999 {
					drain(t, d) // the ring never fills: every event is written
				}
			}
			drain(t, d)
			res[arm]["new allowed"] = append(res[arm]["new allowed"], float64(allowed.Nanoseconds())/float64(n))
			res[arm]["new denied"] = append(res[arm]["new denied"], float64(denied.Nanoseconds())/float64(n))
			// A fresh conntrack for the next round's new flows.
			if err := flushAllCT(d); err != nil {
				t.Fatal(err)
			}
		}
	}
	lost, _ := on.EventsLost()
	var b strings.Builder
	fmt.Fprintf(&b, "from_pod ns/packet, BPF_PROG_TEST_RUN, median of %d interleaved rounds (n=%d), events lost %d\n", rounds, n, lost)
	fmt.Fprintf(&b, "%-12s %10s %10s %10s %8s\n", "case", "events off", "events on", "delta ns", "ratio")
	for _, c := range cases {
		a, o := median(res["off"][c]), median(res["on"][c])
		fmt.Fprintf(&b, "%-12s %10.1f %10.1f %+10.1f %8.3f\n", c, a, o, o-a, o/a)
	}
	fmt.Print(b.String())
}

// runOnce runs prog once on pkt and returns the kernel's run time.
func runOnce(prog *ebpf.Program, pkt []byte) (time.Duration, error) {
	_, dur, err := prog.Benchmark(pkt, 1, nil)
	return dur, err
}

func flushAllCT(d *Datapath) error {
	var (
		k    datapathCtKey
		v    datapathCtValue
		keys []datapathCtKey
	)
	it := d.objs.WardCt.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return err
	}
	for i := range keys {
		if err := d.objs.WardCt.Delete(&keys[i]); err != nil {
			return err
		}
	}
	return nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

package policyfilter

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/proxylib"
	"github.com/wardproxy/ward/proxylib/npdsclient"
	"github.com/wardproxy/ward/xds/npds"
)

// flowFilter is ward.http over newBenchFilter's policy of n rules (the
// request matching the last) with its records shipped to sock through the
// Env's shipper; sock "" is no records.
func flowFilter(tb testing.TB, e *Env, n int, sock string) *httpFilter {
	var rules []l7.HTTPRule
	for i := 0; i < n-1; i++ {
		rules = append(rules, l7.HTTPRule{Method: "GET", Path: fmt.Sprintf("/api/v%d/items/[0-9]+", i)})
	}
	rules = append(rules, l7.HTTPRule{Method: "GET", Path: "/public"})
	c := npdsclient.New(npdsclient.Config{Compile: Compile})
	if err := c.Apply(context.Background(), []*npds.NetworkPolicy{{Name: "ep", EndpointIps: []string{"10.0.0.1"},
		IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 80, Rules: []*npds.PortNetworkPolicyRule{{
			L7: npds.HTTP(rules...),
		}}}}}}, []*npds.NetworkPolicyHosts{{Identity: 1000, HostAddresses: []string{"10.0.0.2"}}}); err != nil {
		tb.Fatal(err)
	}
	hc := &httpConfig{cfg: Config{XDSSocket: "x", Node: "n", FlowSocket: sock}, client: c}
	if sock != "" {
		hc.sink = e.shipper(sock)
	}
	return hc.NewHTTPFilter().(*httpFilter)
}

// TestFlowSocketRecords: ward.http's records reach the flow socket as
// Batch lines with the request's fields.
func TestFlowSocketRecords(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "flows.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e := &Env{}
	f := flowFilter(t, e, 1, sock)
	s := &fakeStream{h: map[string]string{":method": "GET", ":path": "/public", ":authority": "deathstar"}}
	f.OnRequestHeaders(s, true)
	s.h[":path"] = "/private?token=secret"
	f.OnRequestHeaders(s, true)
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	var got []*flow.Record
	for len(got) < 2 {
		line, err := r.ReadBytes('\n')
		if err != nil {
			t.Fatal(err)
		}
		var b flow.Batch
		if err := json.Unmarshal(line, &b); err != nil {
			t.Fatal(err)
		}
		got = append(got, b.Records...)
	}
	if got[0].Verdict != flow.Allowed || got[0].HTTP.Path != "/public" || got[0].Source.IP != "10.0.0.2" || got[0].Source.Identity != 1000 {
		t.Errorf("first record %+v %+v", got[0], got[0].HTTP)
	}
	if got[1].Verdict != flow.Denied || got[1].HTTP.Path != "/private?<redacted>" || got[1].HTTP.Status != 403 {
		t.Errorf("second record %+v %+v", got[1], got[1].HTTP)
	}
}

// TestFlowSocketGone: with no receiver on the flow socket every request
// is still decided at once (Emit never waits) and the records are
// dropped and counted.
func TestFlowSocketGone(t *testing.T) {
	e := &Env{}
	f := flowFilter(t, e, 1, filepath.Join(t.TempDir(), "absent.sock"))
	s := &fakeStream{h: map[string]string{":method": "GET", ":path": "/public", ":authority": "deathstar"}}
	const n = 20000
	for range n {
		if f.OnRequestHeaders(s, true) != proxylib.HeadersContinue {
			t.Fatal("denied")
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for e.FlowsDropped() < n-4096 { // at most a queue's worth still waits
		if time.Now().After(deadline) {
			t.Fatalf("dropped %d of %d records", e.FlowsDropped(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestHelperFlowReceiver is not a test: BenchmarkHTTPFlowRecords runs the
// test binary with WARD_FLOW_RECEIVER set to be wardd's end of the flow
// socket in another process (accept, read, discard), so the benchmark's
// CPU time is the Envoy side's only.
func TestHelperFlowReceiver(t *testing.T) {
	sock := os.Getenv("WARD_FLOW_RECEIVER")
	if sock == "" {
		t.Skip("helper process of BenchmarkHTTPFlowRecords")
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("listening\n")
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go io.Copy(io.Discard, c) //nolint:errcheck // until the benchmark ends
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkHTTPFlowRecords is the Envoy side's CPU per request of
// ward.http without flow records and with them shipped to wardd's flow
// socket (record built, queued, JSON-encoded and written in batches by the
// shipper's goroutine). cpu-ns/op is the process's CPU time (every
// thread, the shipper's included) per request; the receiver runs in
// another process.
func BenchmarkHTTPFlowRecords(b *testing.B) {
	sock := filepath.Join(b.TempDir(), "flows.sock")
	rx := exec.Command(os.Args[0], "-test.run=^TestHelperFlowReceiver$")
	rx.Env = append(os.Environ(), "WARD_FLOW_RECEIVER="+sock)
	out, err := rx.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := rx.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { rx.Process.Kill(); rx.Wait() }()
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		b.Fatalf("receiver: %v", err)
	}
	e := &Env{}
	for _, rules := range []int{1, 100} {
		for _, ship := range []bool{false, true} {
			b.Run(fmt.Sprintf("rules=%d/shipped=%v", rules, ship), func(b *testing.B) {
				to := ""
				if ship {
					to = sock
				}
				f := flowFilter(b, e, rules, to)
				s := &fakeStream{h: map[string]string{":method": "GET", ":path": "/public", ":authority": "deathstar"}}
				b.ReportAllocs()
				dropped := e.FlowsDropped()
				start := cpuTime()
				for b.Loop() {
					if f.OnRequestHeaders(s, true) != proxylib.HeadersContinue {
						b.Fatal("denied")
					}
				}
				if ship {
					// The shipper's work for these requests counts too.
					for s := e.ship[sock]; len(e.ship) > 0 && s.Shipped()+s.Dropped() < uint64(b.N); {
						time.Sleep(time.Millisecond)
					}
				}
				b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
				b.ReportMetric(float64(e.FlowsDropped()-dropped)/float64(b.N), "dropped/op")
			})
		}
	}
}

package envoykafka

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/wardproxy/ward/conformance/stack"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

// kafkaListener publishes one Envoy listener with ward.kafka in front of
// upstream ("ip:port") for a client of identity id, and the policy rules;
// kafkaCfg is the filter_config's "kafka" object (nil: defaults). It
// returns the listener's address.
func kafkaListener(t *testing.T, s *stack.Stack, upstream string, id uint32, kafkaCfg map[string]any, rules ...l7.KafkaRule) string {
	t.Helper()
	return kafkaListenerOn(t, s, stack.FreePort(t), upstream, id, kafkaCfg, rules...)
}

// kafkaListenerOn is kafkaListener on a given port.
func kafkaListenerOn(t *testing.T, s *stack.Stack, port uint32, upstream string, id uint32, kafkaCfg map[string]any, rules ...l7.KafkaRule) string {
	t.Helper()
	host, portS, err := net.SplitHostPort(upstream)
	if err != nil {
		t.Fatal(err)
	}
	uport, _ := strconv.Atoi(portS)
	cfg := map[string]any{"xds_socket": s.Socket, "node": s.Node, "endpoint": "kafka-broker", "port": 9092, "remote_identity": id}
	if kafkaCfg != nil {
		cfg["kafka"] = kafkaCfg
	}
	raw, _ := json.Marshal(cfg)
	l, err := xds.TCPListener{Name: "kafka", Address: "127.0.0.1", Port: port, Cluster: "broker",
		Filters: []xds.ModuleFilter{{Name: "ward.kafka", Config: raw}}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	s.PushEnvoy(t, xds.EnvoyResources{Listeners: []types.Resource{l}, Clusters: []types.Resource{xds.StaticCluster("broker", host, uint32(uport), false)}})
	s.PushPolicy(t, []*npds.NetworkPolicy{{Name: "kafka-broker", IngressPerPortPolicies: []*npds.PortNetworkPolicy{{Port: 9092,
		Rules: []*npds.PortNetworkPolicyRule{{RemoteIdentities: []uint32{id}, L7: npds.Kafka(rules...)}}}}}}, nil)
	return fmt.Sprintf("127.0.0.1:%d", port)
}

// tcpStates counts the IPv4 sockets of this network namespace by state
// (/proc/net/tcp's hex codes: "01" established, "08" close-wait) whose
// local port is local (when non-zero) and remote port remote (when
// non-zero).
func tcpStates(t *testing.T, local, remote int) map[string]int {
	t.Helper()
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 4 {
			continue
		}
		lp := hexPort(fs[1])
		rp := hexPort(fs[2])
		if (local == 0 || lp == local) && (remote == 0 || rp == remote) {
			n[fs[3]]++
		}
	}
	return n
}

func hexPort(addr string) int {
	_, p, _ := strings.Cut(addr, ":")
	v, _ := strconv.ParseUint(p, 16, 32)
	return int(v)
}

func port(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := strconv.Atoi(p)
	return v
}

// rssKiB is a process's resident set size in KiB.
func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	t.Fatalf("no VmRSS for pid %d", pid)
	return 0
}

// waitUntil polls cond every 50 ms until it holds or a minute passed.
func waitUntil(cond func() bool) bool {
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// TestHalfCloseThroughEnvoy checks ward.kafka passes a half-close on in
// both directions, as tcp_proxy alone does: a client that closes gets its
// upstream connection shut (no CLOSE-WAIT in Envoy until tcp_proxy's idle
// timeout), and an upstream that closes is seen by the client.
func TestHalfCloseThroughEnvoy(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	addr := kafkaListener(t, s, up.Addr().String(), 1001, nil, l7.KafkaRule{})

	// The client closes: the upstream reads EOF, closes, and Envoy keeps
	// no socket of the connection.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	u := <-accepted
	c.(*net.TCPConn).CloseWrite()
	u.SetReadDeadline(time.Now().Add(30 * time.Second)) // a bound on a hang, not a timing assertion
	if n, err := u.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("upstream read after the client's close = %d, %v; want EOF", n, err)
	}
	u.Close()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("client read after the upstream's close = %d, %v; want EOF", n, err)
	}
	c.Close()
	if !waitUntil(func() bool { return tcpStates(t, port(t, addr), 0)["08"] == 0 }) {
		t.Errorf("sockets of the listener in CLOSE-WAIT: %v", tcpStates(t, port(t, addr), 0))
	}

	// The upstream closes first: the client reads EOF.
	c, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	u = <-accepted
	u.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("client read after the upstream's half-close = %d, %v; want EOF", n, err)
	}
	u.Close()
}

// TestMemoryBoundThroughEnvoy plays a client that makes ward.kafka buffer
// as much as it can: many connections each sending most of a frame that
// never completes, and frames over the max frame. The process budget
// closes the connections over it, a frame over the max frame closes its
// connection at once, and Envoy's memory grows by far less than what the
// clients sent.
func TestMemoryBoundThroughEnvoy(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	const budget = 16 << 20
	addr := kafkaListener(t, s, up.Addr().String(), 1001, map[string]any{"memory_budget": budget}, l7.KafkaRule{})
	pid := s.Proc.PID()
	before := rssKiB(t, pid)

	// A frame over the default max frame (4 MiB): closed at once.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte{0, 0x50, 0, 0, 0, 1, 0, 12}) // 5 MiB, a Fetch v12
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("a frame over the max frame: read %d bytes, %v; want the connection closed", n, err)
	}
	c.Close()

	// 30 connections each sending 3 MiB of a 3.5 MiB frame (90 MiB).
	const conns, frame, sent = 30, 7 << 19, 3 << 20
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	closed := 0
	chunk := make([]byte, 64<<10)
	for range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
		hdr := binary.BigEndian.AppendUint32(nil, frame)
		c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(hdr); err != nil {
			closed++
			continue
		}
		for n := 0; n < sent; n += len(chunk) {
			if _, err := c.Write(chunk); err != nil {
				closed++
				break
			}
		}
	}
	// Every connection the budget refused reads EOF (or a reset).
	refused := 0
	for _, c := range open {
		c.SetReadDeadline(time.Now().Add(2 * time.Second)) // an open connection blocks: bound it
		if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
			refused++
		}
	}
	held := conns - refused
	if held > budget/sent+1 || refused == 0 {
		t.Errorf("%d connections hold a %d-byte partial frame under a %d-byte budget (%d refused); want at most %d", held, sent, budget, refused, budget/sent+1)
	}
	grew := rssKiB(t, pid) - before
	t.Logf("Envoy RSS %d KiB before, grew by %d KiB after %d MiB sent; %d connections held, %d refused", before, grew, conns*sent>>20, held, refused)
	if grew > 64<<10 {
		t.Errorf("Envoy's RSS grew by %d KiB holding partial frames; want under 64 MiB (budget %d MiB)", grew, budget>>20)
	}
}

// TestGarbageRoundsThroughEnvoy sends rounds of connections full of
// garbage through ward.kafka (a 900 KiB frame of random bytes, then more):
// each is closed at its first bad frame, and Envoy's memory does not grow
// with the rounds.
func TestGarbageRoundsThroughEnvoy(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	addr := kafkaListener(t, s, up.Addr().String(), 1001, nil, l7.KafkaRule{})
	pid := s.Proc.PID()
	rng := rand.New(rand.NewPCG(1, 2))
	garbage := make([]byte, 1<<20)
	for i := range garbage {
		garbage[i] = byte(rng.Uint32())
	}
	// Frames of a plausible size with garbage inside: held until whole,
	// then refused.
	binary.BigEndian.PutUint32(garbage, 900<<10)
	round := func() {
		var wg sync.WaitGroup
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				_, _ = c.Write(garbage) // refused part-way: a write error is expected
				_, _ = io.Copy(io.Discard, c)
			}()
		}
		wg.Wait()
	}
	round()
	before := rssKiB(t, pid)
	for range 10 {
		round()
	}
	grew := rssKiB(t, pid) - before
	t.Logf("Envoy RSS %d KiB after the first round, grew by %d KiB over 10 more rounds of 20 MiB of garbage", before, grew)
	if grew > 64<<10 {
		t.Errorf("Envoy's RSS grew by %d KiB over rounds of garbage; want under 64 MiB", grew)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

package dns_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	conf "github.com/wardproxy/ward/conformance/dns"
	dnsproxy "github.com/wardproxy/ward/filters/dns"
	"github.com/wardproxy/ward/internal/testenv"
)

// The transparent topology, three namespaces this test creates:
//
//	client (10.99.0.2) ==veth== node (10.99.0.1 | 10.99.1.1) ==veth== server (10.99.1.2, 203.0.113.53 on lo)
//
// The node redirects the client's UDP and TCP port 53 with iptables TPROXY
// to ward's transparent proxy on :15053 (conformance-peers.md §6); unbound
// serves the zone on 203.0.113.53:53 in the server namespace. dig in the
// client asks 203.0.113.53: the answer must come from the proxy, sent from
// 203.0.113.53:53.
const (
	resolverIP = "203.0.113.53"
	clientIP   = "10.99.0.2"
	proxyPort  = "15053"
	endpointID = 42
)

func TestTransparentTPROXY(t *testing.T) {
	testenv.RequireRoot(t)
	for _, c := range []string{"ip", "iptables", "dig", "unbound"} {
		testenv.RequireCommand(t, c)
	}
	tag := fmt.Sprintf("%d", os.Getpid()%100000)
	cl, node, srv := "wdns-c-"+tag, "wdns-n-"+tag, "wdns-s-"+tag
	for _, ns := range []string{cl, node, srv} {
		sh(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	sh(t, "ip", "link", "add", "c0", "netns", cl, "type", "veth", "peer", "name", "n0", "netns", node)
	sh(t, "ip", "link", "add", "n1", "netns", node, "type", "veth", "peer", "name", "s0", "netns", srv)
	for _, c := range [][]string{
		{cl, "addr", "add", clientIP + "/24", "dev", "c0"}, {cl, "link", "set", "c0", "up"},
		{cl, "route", "add", "default", "via", "10.99.0.1"},
		{node, "addr", "add", "10.99.0.1/24", "dev", "n0"}, {node, "link", "set", "n0", "up"},
		{node, "addr", "add", "10.99.1.1/24", "dev", "n1"}, {node, "link", "set", "n1", "up"},
		{node, "route", "add", resolverIP + "/32", "via", "10.99.1.2"},
		{node, "rule", "add", "fwmark", "0x1/0x1", "lookup", "100"},
		{node, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100"},
		{srv, "addr", "add", "10.99.1.2/24", "dev", "s0"}, {srv, "link", "set", "s0", "up"},
		{srv, "addr", "add", resolverIP + "/32", "dev", "lo"},
		{srv, "route", "add", "default", "via", "10.99.1.1"},
	} {
		sh(t, append([]string{"ip", "-n", c[0]}, c[1:]...)...)
	}
	for _, proto := range []string{"udp", "tcp"} {
		sh(t, "ip", "netns", "exec", node, "iptables", "-t", "mangle", "-A", "PREROUTING", "-i", "n0", "-p", proto,
			"--dport", "53", "-j", "TPROXY", "--on-port", proxyPort, "--tproxy-mark", "0x1/0x1")
	}
	conf.StartUnbound(t, conf.Mediabot, conf.UnboundConfig{
		Addr: netip.MustParseAddrPort(resolverIP + ":53"),
		Wrap: []string{"ip", "netns", "exec", srv},
	})

	// The proxy runs in the node namespace: this test binary again, in
	// TestTransparentProxyChild.
	state := filepath.Join(t.TempDir(), "fqdn.json")
	cmd := exec.Command("ip", "netns", "exec", node, os.Args[0], "-test.run=^TestTransparentProxyChild$", "-test.v")
	cmd.Env = append(os.Environ(), "WARD_DNS_CHILD_STATE="+state)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var childErr strings.Builder
	cmd.Stderr = &childErr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{}) // closed when the child has exited; then waitErr is set
	var waitErr error
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		waitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		stdin.Close() // the child stops on EOF
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
		}
	})
	ready := false
	var out []string
	for l := range lines {
		out = append(out, l)
		if strings.Contains(l, "PROXY READY") {
			ready = true
			break
		}
	}
	if !ready {
		t.Fatalf("proxy child did not start:\n%s\n%s", strings.Join(out, "\n"), childErr.String())
	}
	go func() {
		for range lines { // keep draining
		}
	}()

	wrap := []string{"ip", "netns", "exec", cl}
	resolver := netip.MustParseAddrPort(resolverIP + ":53")
	tests := []struct {
		name    string
		qname   string
		args    []string
		status  string
		wantIPs []string
	}{
		{name: "allowed over UDP", qname: "api.github.test", status: "NOERROR", wantIPs: []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"}},
		{name: "allowed over TCP", qname: "support.github.test", args: []string{"+tcp"}, status: "NOERROR", wantIPs: []string{"192.0.2.10"}},
		{name: "bare domain refused", qname: "github.test", status: "REFUSED"},
		{name: "bare domain refused over TCP", qname: "github.test", args: []string{"+tcp"}, status: "REFUSED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := conf.Dig(t, wrap, resolver, tt.qname, tt.args...)
			if r.Status != tt.status {
				t.Fatalf("dig %s %v: status %q; want %q\n%s", tt.qname, tt.args, r.Status, tt.status, r.Output)
			}
			if strings.Contains(r.Output, "unexpected source") {
				t.Errorf("dig saw a reply from an unexpected source:\n%s", r.Output)
			}
			got := r.IPs()
			slices.Sort(got)
			if !slices.Equal(got, tt.wantIPs) {
				t.Errorf("dig %s: IPs %v; want %v", tt.qname, got, tt.wantIPs)
			}
		})
	}
	// The child saves its state on exit: the cache belongs to endpoint 42
	// and the IPs carry FQDN identities.
	stdin.Close()
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("proxy child: %v\n%s", waitErr, childErr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("proxy child did not stop")
	}
	if t.Failed() {
		t.Logf("proxy child stderr:\n%s", childErr.String())
	}
	st, err := dnsproxy.ReadState(state)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Entries) != 4 || len(st.IPs) != 4 {
		t.Fatalf("state: %d entries, %d ipcache IPs; want 4 and 4: %+v", len(st.Entries), len(st.IPs), st)
	}
	for _, e := range st.Entries {
		if e.Endpoint != endpointID {
			t.Errorf("entry %+v: endpoint %d; want %d", e, e.Endpoint, endpointID)
		}
	}
}

// TestTransparentProxyChild is the proxy side of TestTransparentTPROXY, run
// by it inside the node namespace; it does nothing on its own.
func TestTransparentProxyChild(t *testing.T) {
	state := os.Getenv("WARD_DNS_CHILD_STATE")
	if state == "" {
		t.Skip("helper process of TestTransparentTPROXY")
	}
	m, err := dnsproxy.Compile(rules)
	if err != nil {
		t.Fatal(err)
	}
	ipc := &dnsproxy.MemIPCache{}
	p, err := dnsproxy.New(dnsproxy.Config{
		UDPAddr: "0.0.0.0:" + proxyPort, TCPAddr: "0.0.0.0:" + proxyPort, Transparent: true,
		StateFile: state, UpdateTimeout: 10 * time.Second,
	}, dnsproxy.Deps{
		Endpoints: clientOnly{}, Rules: staticRules{m}, IPCache: ipc, Identities: &dnsproxy.LocalAllocator{},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SetSelectors(sels); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	fmt.Println("PROXY READY")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // EOF: the parent is done
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// clientOnly knows one endpoint: the client namespace.
type clientOnly struct{}

func (clientOnly) Endpoint(ip netip.Addr) (uint64, uint32, bool) {
	if ip == netip.MustParseAddr(clientIP) {
		return endpointID, 5000, true
	}
	return 0, 0, false
}

func sh(t *testing.T, argv ...string) {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
}

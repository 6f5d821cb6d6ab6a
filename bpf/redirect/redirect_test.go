package redirect_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/internal/testenv"
)

// Identities of the deathstar scenario.
const (
	idDeathstar  = 1001 // org=empire, class=deathstar
	idTiefighter = 1002 // org=empire, class=tiefighter
	idXwing      = 1003 // org=alliance, class=xwing
)

type env struct {
	topo    *netns.Topology
	dp      *redirect.Datapath
	pinDir  string
	pods    map[string]*netns.Pod
	ids     map[string]uint32
	epIDs   map[string]uint32
	routing redirect.Routing
}

// pinDir mounts a private bpffs for one test.
func pinDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() {
		if err := redirect.Cleanup(dir); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs: %v", err)
		}
	})
	return dir
}

// newEnv builds a topology with the named pods (identities from ids),
// loads the datapath on a private bpffs and installs proxy routing in a
// table of its own.
func newEnv(t *testing.T, cfg redirect.Config, ids map[string]uint32, routes ...netip.Prefix) *env {
	t.Helper()
	testenv.RequireRoot(t)
	e := &env{
		topo:  netns.New(t),
		pods:  map[string]*netns.Pod{},
		ids:   ids,
		epIDs: map[string]uint32{},
	}
	e.pinDir = pinDir(t)
	cfg.PinDir = e.pinDir
	dp, err := redirect.Load(cfg)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	e.dp = dp
	t.Cleanup(func() { dp.Close() })
	s := int(e.topo.Subnet.Addr().As4()[2])
	e.routing = redirect.Routing{Table: 20000 + s, Priority: 9000}
	undo, err := redirect.InstallProxyRouting(e.routing)
	if err != nil {
		t.Fatalf("InstallProxyRouting: %v", err)
	}
	t.Cleanup(func() {
		if err := undo(); err != nil {
			t.Errorf("undo routing: %v", err)
		}
	})
	n := uint32(1)
	for _, name := range []string{"deathstar", "tiefighter", "xwing", "mediabot"} {
		if _, ok := ids[name]; !ok {
			continue
		}
		e.pods[name] = e.topo.AddPod(t, netns.PodConfig{Name: name, Routes: routes})
		e.epIDs[name] = n
		n++
	}
	return e
}

func (e *env) add(t *testing.T, name string, ingress, egress bool) {
	t.Helper()
	p := e.pods[name]
	err := e.dp.AddEndpoint(redirect.Endpoint{
		ID: e.epIDs[name], IP: p.IP, IfIndex: p.HostIfIndex, Identity: e.ids[name],
		EnforceIngress: ingress, EnforceEgress: egress,
	})
	if err != nil {
		t.Fatalf("AddEndpoint(%s): %v", name, err)
	}
}

// serveHTTP runs an HTTP server on addr inside the pod.
func serveHTTP(t *testing.T, p *netns.Pod, addr string) {
	t.Helper()
	ln, err := p.Listen("tcp4", addr)
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, p.Name, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Ship landed at %s", r.Host)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func curl(ctx context.Context, p *netns.Pod, url string, connectTimeout string) (string, error) {
	return p.Run(ctx, "curl", "-sS", "--connect-timeout", connectTimeout, "--max-time", "10", url)
}

func count(t *testing.T, dp *redirect.Datapath, r redirect.Reason) uint64 {
	t.Helper()
	n, err := dp.Count(r)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func deathstarEnv(t *testing.T, cfg redirect.Config) *env {
	testenv.RequireCommand(t, "curl")
	e := newEnv(t, cfg, map[string]uint32{"deathstar": idDeathstar, "tiefighter": idTiefighter, "xwing": idXwing})
	serveHTTP(t, e.pods["deathstar"], ":80")
	serveHTTP(t, e.pods["deathstar"], ":8080")
	return e
}

// TestDeathstarL3L4: ingress policy of deathstar allows org=empire
// (tiefighter) on TCP 80 only.
func TestDeathstarL3L4(t *testing.T) {
	e := deathstarEnv(t, redirect.Config{})
	ds := e.pods["deathstar"]
	if err := e.dp.SetPolicy(e.epIDs["deathstar"], []redirect.PolicyEntry{
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Identity: idTiefighter, Port: 80, Proto: redirect.ProtoTCP}, Verdict: redirect.Allow},
	}); err != nil {
		t.Fatal(err)
	}
	e.add(t, "deathstar", true, false)
	e.add(t, "tiefighter", false, false)
	e.add(t, "xwing", false, false)
	c := ctx(t)

	out, err := curl(c, e.pods["tiefighter"], "http://"+ds.IP.String()+"/v1/request-landing", "5")
	if err != nil || !strings.Contains(out, "Ship landed") {
		t.Fatalf("tiefighter -> deathstar:80 = %q, %v; want landed", out, err)
	}
	denied := count(t, e.dp, redirect.ReasonPolicyDenied)
	if out, err := curl(c, e.pods["xwing"], "http://"+ds.IP.String()+"/v1/request-landing", "1"); err == nil {
		t.Fatalf("xwing -> deathstar:80 = %q; want dropped", out)
	}
	if out, err := curl(c, e.pods["tiefighter"], "http://"+ds.IP.String()+":8080/", "1"); err == nil {
		t.Fatalf("tiefighter -> deathstar:8080 = %q; want dropped", out)
	}
	if got := count(t, e.dp, redirect.ReasonPolicyDenied); got < denied+2 {
		t.Errorf("policy-denied counter = %d; want >= %d", got, denied+2)
	}
	if n := count(t, e.dp, redirect.ReasonReply); n == 0 {
		t.Errorf("reply counter = 0; replies of the allowed flow should pass through conntrack")
	}
	for _, name := range []string{"tiefighter", "xwing"} {
		if id, ok := e.dp.IPCache().Lookup(e.pods[name].IP); !ok || id != e.ids[name] {
			t.Errorf("ipcache[%s] = %d, %v; want %d", name, id, ok, e.ids[name])
		}
	}
}

// transparentListener listens on 0.0.0.0:0 with IP_TRANSPARENT in the
// host namespace, standing in for an Envoy listener.
func transparentListener(t *testing.T, network string) net.Listener {
	t.Helper()
	lc := net.ListenConfig{Control: transparent}
	ln, err := lc.Listen(context.Background(), network, "0.0.0.0:0")
	if err != nil {
		t.Fatalf("transparent listen: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func transparent(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		if serr == nil && strings.HasPrefix(network, "udp") {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 1)
		}
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		}
	})
	return errors.Join(err, serr)
}

// TestRedirectToTransparentListener: tiefighter's port-80 traffic to the
// deathstar is redirected (ingress L7 policy) to a transparent listener in
// the host namespace, which sees the original destination as its local
// address; xwing stays dropped and port 8080 too.
func TestRedirectToTransparentListener(t *testing.T) {
	e := deathstarEnv(t, redirect.Config{})
	ds := e.pods["deathstar"]
	ln := transparentListener(t, "tcp4")
	proxyPort := uint16(ln.Addr().(*net.TCPAddr).Port)
	seen := make(chan string, 16)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		local := r.Context().Value(http.LocalAddrContextKey).(net.Addr).String()
		select {
		case seen <- local + " from " + r.RemoteAddr:
		default:
		}
		fmt.Fprintf(w, "proxy saw original destination %s", local)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	if err := e.dp.SetPolicy(e.epIDs["deathstar"], []redirect.PolicyEntry{
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Identity: idTiefighter, Port: 80, Proto: redirect.ProtoTCP}, Verdict: redirect.Redirect, ProxyPort: proxyPort},
	}); err != nil {
		t.Fatal(err)
	}
	e.add(t, "deathstar", true, false)
	e.add(t, "tiefighter", false, false)
	e.add(t, "xwing", false, false)
	c := ctx(t)

	orig := net.JoinHostPort(ds.IP.String(), "80")
	for i := range 3 { // new connections and the established path
		out, err := curl(c, e.pods["tiefighter"], "http://"+ds.IP.String()+"/v1/request-landing", "5")
		if err != nil || !strings.Contains(out, "proxy saw original destination "+orig) {
			t.Fatalf("curl %d tiefighter -> deathstar:80 = %q, %v; want the proxy to see %s", i, out, err, orig)
		}
		if got := <-seen; !strings.HasPrefix(got, orig+" from "+e.pods["tiefighter"].IP.String()+":") {
			t.Errorf("proxy saw %q; want local %s from tiefighter", got, orig)
		}
	}
	if n := count(t, e.dp, redirect.ReasonRedirected); n < 3 {
		t.Errorf("redirected counter = %d; want >= 3", n)
	}
	if out, err := curl(c, e.pods["xwing"], "http://"+ds.IP.String()+"/", "1"); err == nil {
		t.Fatalf("xwing -> deathstar:80 = %q; want dropped", out)
	}
	if out, err := curl(c, e.pods["tiefighter"], "http://"+ds.IP.String()+":8080/", "1"); err == nil {
		t.Fatalf("tiefighter -> deathstar:8080 = %q; want dropped", out)
	}

	// With the proxy gone, redirected flows are dropped, not let through.
	srv.Close()
	ln.Close()
	before := count(t, e.dp, redirect.ReasonNoProxySocket)
	if out, err := curl(c, e.pods["tiefighter"], "http://"+ds.IP.String()+"/", "1"); err == nil {
		t.Fatalf("with no proxy, tiefighter -> deathstar:80 = %q; want dropped", out)
	}
	if got := count(t, e.dp, redirect.ReasonNoProxySocket); got <= before {
		t.Errorf("no-proxy-socket counter = %d; want > %d", got, before)
	}
}

// TestDNSRedirect: mediabot's DNS queries (UDP 53, egress) go to a
// transparent UDP socket that learns the original destination from
// IP_RECVORIGDSTADDR and answers from it.
func TestDNSRedirect(t *testing.T) {
	testenv.RequireCommand(t, "dig")
	e := newEnv(t, redirect.Config{}, map[string]uint32{"mediabot": 1004})
	lc := net.ListenConfig{Control: transparent}
	pc, err := lc.ListenPacket(context.Background(), "udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	uc := pc.(*net.UDPConn)
	proxyPort := uint16(uc.LocalAddr().(*net.UDPAddr).Port)
	origs := make(chan netip.AddrPort, 16)
	go dnsProxy(uc, origs)

	if err := e.dp.SetPolicy(e.epIDs["mediabot"], []redirect.PolicyEntry{
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Egress, Port: 53, Proto: redirect.ProtoUDP}, Verdict: redirect.Redirect, ProxyPort: proxyPort},
	}); err != nil {
		t.Fatal(err)
	}
	e.add(t, "mediabot", false, true)
	mb := e.pods["mediabot"]
	// A DNS server address that exists nowhere: only the redirect answers.
	server := netip.AddrFrom4([4]byte{10, 200, e.topo.Subnet.Addr().As4()[2], 53})
	c := ctx(t)
	out, err := mb.Run(c, "dig", "@"+server.String(), "-p", "53", "+tries=1", "+time=5", "api.github.com", "A")
	if err != nil || !strings.Contains(out, "status: NOERROR") {
		t.Fatalf("dig = %q, %v", out, err)
	}
	if got, want := <-origs, netip.AddrPortFrom(server, 53); got != want {
		t.Errorf("proxy original destination = %v; want %v", got, want)
	}
	// Egress is enforced: anything but DNS is dropped.
	if out, err := mb.Run(c, "curl", "-sS", "--connect-timeout", "1", "http://"+server.String()+"/"); err == nil {
		t.Fatalf("mediabot -> :80 = %q; want dropped", out)
	}
}

// dnsProxy answers every query with an empty NOERROR response sent from
// the original destination (a transparent socket bound to it).
func dnsProxy(uc *net.UDPConn, origs chan<- netip.AddrPort) {
	buf := make([]byte, 1500)
	oob := make([]byte, 256)
	for {
		n, oobn, _, from, err := uc.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			return
		}
		orig, ok := origDst(oob[:oobn])
		if !ok || n < 12 {
			continue
		}
		select {
		case origs <- orig:
		default:
		}
		resp := append([]byte(nil), buf[:n]...)
		resp[2] |= 0x80 // QR
		resp[3] = 0x80  // RA, NOERROR
		lc := net.ListenConfig{Control: transparent}
		rc, err := lc.ListenPacket(context.Background(), "udp4", orig.String())
		if err != nil {
			continue
		}
		rc.WriteTo(resp, net.UDPAddrFromAddrPort(from))
		rc.Close()
	}
}

func origDst(oob []byte) (netip.AddrPort, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(m.Data) >= 8 {
			port := uint16(m.Data[2])<<8 | uint16(m.Data[3])
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Data[4:8])), port), true
		}
	}
	return netip.AddrPort{}, false
}

// TestPolicyOverflowLocksDown: a policy that does not fit locks the
// endpoint down (drops everything) and reports ErrPolicyMapFull; a policy
// that fits lifts the lockdown.
func TestPolicyOverflowLocksDown(t *testing.T) {
	e := deathstarEnv(t, redirect.Config{MaxPolicyEntriesPerEndpoint: 2})
	ds := e.pods["deathstar"]
	allow80 := redirect.PolicyEntry{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Identity: idTiefighter, Port: 80, Proto: redirect.ProtoTCP}, Verdict: redirect.Allow}
	// Not enforcing ingress: without lockdown, everything would pass.
	e.add(t, "deathstar", false, false)
	e.add(t, "tiefighter", false, false)
	var big []redirect.PolicyEntry
	for p := uint16(1); p <= 3; p++ {
		big = append(big, redirect.PolicyEntry{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Port: p, Proto: redirect.ProtoTCP}, Verdict: redirect.Allow})
	}
	err := e.dp.SetPolicy(e.epIDs["deathstar"], big)
	if !errors.Is(err, redirect.ErrPolicyMapFull) {
		t.Fatalf("SetPolicy(3 entries, budget 2) = %v; want ErrPolicyMapFull", err)
	}
	if !e.dp.Locked(e.epIDs["deathstar"]) {
		t.Fatal("endpoint not locked down")
	}
	c := ctx(t)
	if out, err := curl(c, e.pods["tiefighter"], "http://"+ds.IP.String()+"/", "1"); err == nil {
		t.Fatalf("locked-down deathstar answered %q", out)
	}
	if n := count(t, e.dp, redirect.ReasonLockdown); n == 0 {
		t.Error("lockdown counter = 0")
	}
	if err := e.dp.SetPolicy(e.epIDs["deathstar"], []redirect.PolicyEntry{allow80}); err != nil {
		t.Fatal(err)
	}
	if e.dp.Locked(e.epIDs["deathstar"]) {
		t.Fatal("lockdown not lifted")
	}
	if out, err := curl(c, e.pods["tiefighter"], "http://"+ds.IP.String()+"/", "5"); err != nil {
		t.Fatalf("after lockdown lifted: %q, %v", out, err)
	}
}

// TestPolicyMapCapacity: the shared policy map at capacity locks down the
// endpoint whose write did not fit.
func TestPolicyMapCapacity(t *testing.T) {
	testenv.RequireRoot(t)
	dp, err := redirect.Load(redirect.Config{PinDir: pinDir(t), PolicyMapSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	entries := func(n int) []redirect.PolicyEntry {
		var out []redirect.PolicyEntry
		for i := range n {
			out = append(out, redirect.PolicyEntry{PolicyKey: redirect.PolicyKey{Direction: redirect.Egress, Port: uint16(100 + i), Proto: redirect.ProtoUDP}, Verdict: redirect.Deny})
		}
		return out
	}
	if err := dp.SetPolicy(1, entries(3)); err != nil {
		t.Fatal(err)
	}
	if err := dp.SetPolicy(2, entries(3)); !errors.Is(err, redirect.ErrPolicyMapFull) {
		t.Fatalf("SetPolicy over capacity = %v; want ErrPolicyMapFull", err)
	}
	if !dp.Locked(2) || dp.Locked(1) {
		t.Fatalf("Locked(1,2) = %v,%v; want false,true", dp.Locked(1), dp.Locked(2))
	}
	// Shrinking endpoint 1 makes room.
	if err := dp.SetPolicy(1, entries(1)); err != nil {
		t.Fatal(err)
	}
	if err := dp.SetPolicy(2, entries(3)); err != nil || dp.Locked(2) {
		t.Fatalf("SetPolicy after room = %v, locked %v", err, dp.Locked(2))
	}
}

func TestSetPolicyValidation(t *testing.T) {
	testenv.RequireRoot(t)
	dp, err := redirect.Load(redirect.Config{PinDir: pinDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	tcp80 := redirect.PolicyKey{Direction: redirect.Ingress, Port: 80, Proto: redirect.ProtoTCP}
	tests := []struct {
		name    string
		entries []redirect.PolicyEntry
		wantErr string
	}{
		{name: "redirect without port", entries: []redirect.PolicyEntry{{PolicyKey: tcp80, Verdict: redirect.Redirect}}, wantErr: "without a proxy port"},
		{name: "port without proto", entries: []redirect.PolicyEntry{{PolicyKey: redirect.PolicyKey{Port: 80}, Verdict: redirect.Allow}}, wantErr: "needs a protocol"},
		{name: "redirect icmp", entries: []redirect.PolicyEntry{{PolicyKey: redirect.PolicyKey{Proto: redirect.ProtoICMP}, Verdict: redirect.Redirect, ProxyPort: 1}}, wantErr: "TCP or UDP"},
		{name: "conflict", entries: []redirect.PolicyEntry{{PolicyKey: tcp80, Verdict: redirect.Allow}, {PolicyKey: tcp80, Verdict: redirect.Redirect, ProxyPort: 9}}, wantErr: "conflicting"},
		{name: "deny wins merge", entries: []redirect.PolicyEntry{{PolicyKey: tcp80, Verdict: redirect.Allow}, {PolicyKey: tcp80, Verdict: redirect.Deny}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := dp.SetPolicy(7, tt.entries)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("SetPolicy = %v; want nil", err)
				}
				if got := dp.Policy(7); len(got) != 1 || got[0].Verdict != redirect.Deny {
					t.Fatalf("Policy = %v; want one deny", got)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("SetPolicy = %v; want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestIPCache(t *testing.T) {
	testenv.RequireRoot(t)
	dp, err := redirect.Load(redirect.Config{PinDir: pinDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	ipc := dp.IPCache()
	// The DNS proxy's view of the ipcache.
	var _ interface {
		Upsert(netip.Prefix, uint32) error
		Delete(netip.Prefix) error
	} = ipc
	mustUpsert := func(p string, id uint32) {
		t.Helper()
		if err := ipc.Upsert(netip.MustParsePrefix(p), id); err != nil {
			t.Fatal(err)
		}
	}
	mustUpsert("198.51.100.0/24", 16777217)
	mustUpsert("198.51.100.7/32", 16777218)
	mustUpsert("198.51.100.7/32", 16777219) // in place
	mustUpsert("2001:db8::/32", 16777220)
	mustUpsert("2001:db8::7/128", 16777221)
	for _, tc := range []struct {
		addr string
		id   uint32
		ok   bool
	}{
		{"198.51.100.7", 16777219, true},
		{"198.51.100.8", 16777217, true},
		{"203.0.113.1", redirect.IdentityWorld, false},
		{"2001:db8::7", 16777221, true},
		{"2001:db8::8", 16777220, true},
		{"::ffff:198.51.100.8", 16777217, true}, // v4-mapped is v4
		{"2001:db9::1", redirect.IdentityWorld, false},
	} {
		if id, ok := ipc.Lookup(netip.MustParseAddr(tc.addr)); id != tc.id || ok != tc.ok {
			t.Errorf("Lookup(%s) = %d, %v; want %d, %v", tc.addr, id, ok, tc.id, tc.ok)
		}
	}
	if err := ipc.Delete(netip.MustParsePrefix("198.51.100.7/32")); err != nil {
		t.Fatal(err)
	}
	if err := ipc.Delete(netip.MustParsePrefix("198.51.100.7/32")); err != nil {
		t.Fatalf("second Delete = %v; want nil", err)
	}
	if id, _ := ipc.Lookup(netip.MustParseAddr("198.51.100.7")); id != 16777217 {
		t.Errorf("after delete Lookup = %d; want the /24's identity", id)
	}
	if err := ipc.Upsert(netip.MustParsePrefix("198.51.100.0/24"), 0); err == nil {
		t.Error("Upsert identity 0 = nil; want error")
	}
}

// TestRestartKeepsEnforcing: closing the datapath and loading it again
// from the same pins keeps the programs attached and the maps (policy,
// conntrack) in place; RemoveEndpoint detaches; Cleanup removes the pins.
func TestRestartKeepsEnforcing(t *testing.T) {
	e := deathstarEnv(t, redirect.Config{})
	ds := e.pods["deathstar"]
	if err := e.dp.SetPolicy(e.epIDs["deathstar"], []redirect.PolicyEntry{
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Identity: idTiefighter, Port: 80, Proto: redirect.ProtoTCP}, Verdict: redirect.Allow},
	}); err != nil {
		t.Fatal(err)
	}
	e.add(t, "deathstar", true, false)
	e.add(t, "tiefighter", false, false)
	e.add(t, "xwing", false, false)
	c := ctx(t)

	// A long-lived connection across the restart.
	conn, err := e.pods["tiefighter"].Dial(c, "tcp4", net.JoinHostPort(ds.IP.String(), "80"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := e.dp.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Programs stay attached while no wardd runs.
	if out, err := curl(c, e.pods["xwing"], "http://"+ds.IP.String()+"/", "1"); err == nil {
		t.Fatalf("with wardd stopped xwing got %q; want dropped", out)
	}
	dp, err := redirect.Load(redirect.Config{PinDir: e.pinDir})
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	defer dp.Close()
	if got := len(dp.Endpoints()); got != 3 {
		t.Errorf("restored %d endpoints; want 3", got)
	}
	if got := dp.Policy(e.epIDs["deathstar"]); len(got) != 1 {
		t.Errorf("restored policy = %v; want 1 entry", got)
	}
	fmt.Fprintf(conn, "GET / HTTP/1.0\r\nHost: ds\r\n\r\n")
	buf := make([]byte, 512)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := conn.Read(buf); err != nil || !strings.Contains(string(buf[:n]), "Ship landed") {
		t.Fatalf("established connection after restart: %q, %v", buf[:n], err)
	}
	if out, err := curl(c, e.pods["xwing"], "http://"+ds.IP.String()+"/", "1"); err == nil {
		t.Fatalf("after restart xwing got %q; want dropped", out)
	}
	// Re-adding an endpoint after restart swaps programs in place.
	e.dp = dp
	e.add(t, "deathstar", true, false)
	if err := dp.RemoveEndpoint(e.epIDs["deathstar"]); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(e.pinDir, "links", fmt.Sprintf("tcx-%d-ingress", ds.HostIfIndex))); !os.IsNotExist(err) {
		t.Errorf("link pin survives RemoveEndpoint: %v", err)
	}
	if n, err := redirect.AttachedPrograms(ds.HostIfIndex); err != nil || n != 0 {
		t.Errorf("AttachedPrograms after RemoveEndpoint = %d, %v; want 0", n, err)
	}
	// Detached: xwing reaches the deathstar again.
	if out, err := curl(c, e.pods["xwing"], "http://"+ds.IP.String()+"/", "5"); err != nil {
		t.Fatalf("after RemoveEndpoint xwing: %q, %v", out, err)
	}
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := redirect.Cleanup(e.pinDir); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(e.pinDir)
	for _, ent := range ents {
		if !strings.HasSuffix(ent.Name(), ".debug") { // bpffs's own preloaded iterators
			t.Errorf("pin left after Cleanup: %s", ent.Name())
		}
	}
}

// TestFQDNAllowedAfterResolution: an egress rule to an FQDN identity
// drops the IP until the DNS proxy upserts it into the ipcache, allows it
// then, and drops new connections again after the entry is deleted.
func TestFQDNAllowedAfterResolution(t *testing.T) {
	testenv.RequireCommand(t, "curl")
	// "api.github.com" lives outside the pod range, in TEST-NET-2 (one
	// address per topology), and is no ward endpoint (world).
	e := newEnv(t, redirect.Config{}, map[string]uint32{"mediabot": 1004}, netip.MustParsePrefix("198.51.100.0/24"))
	ghIP := netip.AddrFrom4([4]byte{198, 51, 100, e.topo.Subnet.Addr().As4()[2]})
	gh := e.topo.AddPod(t, netns.PodConfig{Name: "github", IP: ghIP})
	serveHTTP(t, gh, ":80")
	mb := e.pods["mediabot"]
	const fqdnID = 16777217 // local identity of fqdn:api.github.com
	if err := e.dp.SetPolicy(e.epIDs["mediabot"], []redirect.PolicyEntry{
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Egress, Identity: fqdnID, Port: 80, Proto: redirect.ProtoTCP}, Verdict: redirect.Allow},
	}); err != nil {
		t.Fatal(err)
	}
	e.add(t, "mediabot", false, true)
	c := ctx(t)
	url := "http://" + ghIP.String() + "/"
	if out, err := curl(c, mb, url, "1"); err == nil {
		t.Fatalf("before resolution: %q; want dropped", out)
	}
	if err := e.dp.IPCache().Upsert(netip.PrefixFrom(ghIP, 32), fqdnID); err != nil {
		t.Fatal(err)
	}
	if out, err := curl(c, mb, url, "5"); err != nil || !strings.Contains(out, "Ship landed") {
		t.Fatalf("after resolution: %q, %v", out, err)
	}
	if err := e.dp.IPCache().Delete(netip.PrefixFrom(ghIP, 32)); err != nil {
		t.Fatal(err)
	}
	if out, err := curl(c, mb, url, "1"); err == nil {
		t.Fatalf("after expiry: %q; want dropped", out)
	}
}

// TestFragments: fragments of an allowed UDP flow follow their first
// fragment; fragments of a redirected flow are dropped and counted, never
// delivered around the proxy.
func TestFragments(t *testing.T) {
	e := newEnv(t, redirect.Config{}, map[string]uint32{"deathstar": idDeathstar, "tiefighter": idTiefighter})
	ds, tf := e.pods["deathstar"], e.pods["tiefighter"]
	pc, err := ds.ListenPacket("udp4", ":9000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	lc := net.ListenConfig{Control: transparent}
	proxyPC, err := lc.ListenPacket(context.Background(), "udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxyPC.Close() })
	proxyPort := uint16(proxyPC.LocalAddr().(*net.UDPAddr).Port)
	if err := e.dp.SetPolicy(e.epIDs["deathstar"], []redirect.PolicyEntry{
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Identity: idTiefighter, Port: 9000, Proto: redirect.ProtoUDP}, Verdict: redirect.Allow},
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Identity: idTiefighter, Port: 9053, Proto: redirect.ProtoUDP}, Verdict: redirect.Redirect, ProxyPort: proxyPort},
	}); err != nil {
		t.Fatal(err)
	}
	e.add(t, "deathstar", true, false)
	e.add(t, "tiefighter", false, false)
	c := ctx(t)
	big := []byte(strings.Repeat("x", 4000)) // > 1500 MTU: IP fragments
	send := func(port string) {
		t.Helper()
		conn, err := tf.Dial(c, "udp4", net.JoinHostPort(ds.IP.String(), port))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write(big); err != nil {
			t.Fatal(err)
		}
	}
	send("9000")
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 8192)
	n, _, err := pc.ReadFrom(buf)
	if err != nil || n != len(big) {
		t.Fatalf("fragmented datagram on an allowed flow: %d bytes, %v; want %d", n, err, len(big))
	}
	before := count(t, e.dp, redirect.ReasonFragment)
	send("9053")
	// The drop is synchronous with the send's transmission; poll the
	// counter until the fragments have crossed the veth.
	deadline := time.Now().Add(10 * time.Second)
	for count(t, e.dp, redirect.ReasonFragment) < before+3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := count(t, e.dp, redirect.ReasonFragment); got < before+3 {
		t.Errorf("fragment drops = %d; want >= %d (all 3 fragments of the redirected datagram)", got, before+3)
	}
	proxyPC.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, _, err := proxyPC.ReadFrom(buf); err == nil {
		t.Errorf("proxy received %d bytes of a fragmented datagram; want none", n)
	}
}

// TestPolicyRewriteNoWindow: rewriting an endpoint's policy between two
// forms that both allow the flow (and both deny xwing) never drops an
// allowed connection nor lets a denied one through.
func TestPolicyRewriteNoWindow(t *testing.T) {
	e := deathstarEnv(t, redirect.Config{})
	ds := e.pods["deathstar"]
	specific := []redirect.PolicyEntry{
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Identity: idTiefighter, Port: 80, Proto: redirect.ProtoTCP}, Verdict: redirect.Allow},
	}
	wildcard := []redirect.PolicyEntry{
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Identity: idTiefighter, Proto: redirect.ProtoTCP}, Verdict: redirect.Allow},
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Identity: idXwing}, Verdict: redirect.Deny},
	}
	if err := e.dp.SetPolicy(e.epIDs["deathstar"], specific); err != nil {
		t.Fatal(err)
	}
	e.add(t, "deathstar", true, false)
	e.add(t, "tiefighter", false, false)
	e.add(t, "xwing", false, false)
	c := ctx(t)

	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			pol := specific
			if i%2 == 1 {
				pol = wildcard
			}
			if err := e.dp.SetPolicy(e.epIDs["deathstar"], pol); err != nil {
				done <- err
				return
			}
		}
	}()
	addr := net.JoinHostPort(ds.IP.String(), "80")
	denied := count(t, e.dp, redirect.ReasonPolicyDenied)
	for i := range 100 {
		conn, err := e.pods["tiefighter"].Dial(c, "tcp4", addr)
		if err != nil {
			close(stop)
			t.Fatalf("connection %d during policy rewrites: %v", i, err)
		}
		conn.Close()
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := count(t, e.dp, redirect.ReasonPolicyDenied); got != denied {
		t.Errorf("policy-denied grew by %d during rewrites of equivalent policies", got-denied)
	}
	if out, err := curl(c, e.pods["xwing"], "http://"+addr+"/", "1"); err == nil {
		t.Fatalf("xwing after rewrites = %q; want dropped", out)
	}
}

// TestIPv6Deathstar: the L3/L4 scenario and the redirect over IPv6.
func TestIPv6Deathstar(t *testing.T) {
	testenv.RequireCommand(t, "curl")
	e := &env{topo: netns.New(t), pods: map[string]*netns.Pod{}, epIDs: map[string]uint32{},
		ids: map[string]uint32{"deathstar": idDeathstar, "tiefighter": idTiefighter, "xwing": idXwing}}
	e.pinDir = pinDir(t)
	dp, err := redirect.Load(redirect.Config{PinDir: e.pinDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	e.dp = dp
	undo, err := redirect.InstallProxyRouting(redirect.Routing{Table: 20000 + int(e.topo.Subnet.Addr().As4()[2]), Priority: 9000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { undo() })
	for i, name := range []string{"deathstar", "tiefighter", "xwing"} {
		e.pods[name] = e.topo.AddPod(t, netns.PodConfig{Name: name, IPv6: true})
		e.epIDs[name] = uint32(i + 1)
	}
	ds := e.pods["deathstar"]
	for _, port := range []string{"80", "8080"} {
		ln, err := ds.Listen("tcp6", "[::]:"+port)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "Ship landed") })}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	lc := net.ListenConfig{Control: transparent6}
	pln, err := lc.Listen(context.Background(), "tcp6", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pln.Close() })
	psrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "proxy saw %s", r.Context().Value(http.LocalAddrContextKey).(net.Addr))
	})}
	go psrv.Serve(pln)
	t.Cleanup(func() { psrv.Close() })
	proxyPort := uint16(pln.Addr().(*net.TCPAddr).Port)

	if err := dp.SetPolicy(e.epIDs["deathstar"], []redirect.PolicyEntry{
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Identity: idTiefighter, Port: 80, Proto: redirect.ProtoTCP}, Verdict: redirect.Allow},
	}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"deathstar", "tiefighter", "xwing"} {
		p := e.pods[name]
		if err := dp.AddEndpoint(redirect.Endpoint{ID: e.epIDs[name], IP: p.IP, IPv6: p.IPv6, IfIndex: p.HostIfIndex, Identity: e.ids[name], EnforceIngress: name == "deathstar"}); err != nil {
			t.Fatal(err)
		}
	}
	c := ctx(t)
	url := "http://[" + ds.IPv6.String() + "]"
	if out, err := curl(c, e.pods["tiefighter"], url+"/", "5"); err != nil || out != "Ship landed" {
		t.Fatalf("tiefighter -> deathstar:80 over IPv6 = %q, %v", out, err)
	}
	if out, err := curl(c, e.pods["xwing"], url+"/", "1"); err == nil {
		t.Fatalf("xwing -> deathstar:80 over IPv6 = %q; want dropped", out)
	}
	if out, err := curl(c, e.pods["tiefighter"], url+":8080/", "1"); err == nil {
		t.Fatalf("tiefighter -> deathstar:8080 over IPv6 = %q; want dropped", out)
	}
	if err := dp.SetPolicy(e.epIDs["deathstar"], []redirect.PolicyEntry{
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Identity: idTiefighter, Port: 80, Proto: redirect.ProtoTCP}, Verdict: redirect.Redirect, ProxyPort: proxyPort},
	}); err != nil {
		t.Fatal(err)
	}
	want := "proxy saw " + net.JoinHostPort(ds.IPv6.String(), "80")
	if out, err := curl(c, e.pods["tiefighter"], url+"/", "5"); err != nil || out != want {
		t.Fatalf("redirected over IPv6 = %q, %v; want %q", out, err, want)
	}
	// From the host (the hairpin over IPv6).
	if err := dp.SetPolicy(e.epIDs["deathstar"], []redirect.PolicyEntry{
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Identity: redirect.IdentityHost, Port: 80, Proto: redirect.ProtoTCP}, Verdict: redirect.Redirect, ProxyPort: proxyPort},
	}); err != nil {
		t.Fatal(err)
	}
	if err := dp.IPCache().Upsert(netip.PrefixFrom(e.topo.HostIPv6, 128), redirect.IdentityHost); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(c, "curl", "-sS", "--connect-timeout", "5", "--max-time", "10", url+"/").CombinedOutput()
	if err != nil || string(out) != want {
		t.Fatalf("host -> deathstar:80 over IPv6 = %q, %v; want %q (hairpinned)", out, err, want)
	}
}

func transparent6(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
	})
	return errors.Join(err, serr)
}

// TestHostIngressRedirect: an ingress L7 redirect for a client that is
// not a local endpoint — the host itself, whose address on the veths
// carries the host identity — reaches the transparent listener through
// the hairpin (to_pod -> the veth's ingress -> bpf_sk_assign), on new and
// established packets; a world client without a rule stays dropped, and
// without the proxy the flow is dropped, never delivered around it.
// (Clients on other nodes: conformance/multinode, where a node is a
// namespace whose TCP early demux can be turned off.)
func TestHostIngressRedirect(t *testing.T) {
	e := deathstarEnv(t, redirect.Config{})
	ds := e.pods["deathstar"]
	ln := transparentListener(t, "tcp4")
	proxyPort := uint16(ln.Addr().(*net.TCPAddr).Port)
	seen := make(chan string, 16)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		local := r.Context().Value(http.LocalAddrContextKey).(net.Addr).String()
		select {
		case seen <- r.RemoteAddr:
		default:
		}
		fmt.Fprintf(w, "proxy saw original destination %s", local)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	if err := e.dp.SetPolicy(e.epIDs["deathstar"], []redirect.PolicyEntry{
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Identity: redirect.IdentityHost, Port: 80, Proto: redirect.ProtoTCP}, Verdict: redirect.Redirect, ProxyPort: proxyPort},
	}); err != nil {
		t.Fatal(err)
	}
	// Only the deathstar is a local endpoint: xwing stands for a client
	// on another node (no programs on its veth), from the world.
	e.add(t, "deathstar", true, false)
	if err := e.dp.IPCache().Upsert(netip.PrefixFrom(e.topo.HostIP, 32), redirect.IdentityHost); err != nil {
		t.Fatal(err)
	}
	c := ctx(t)
	orig := net.JoinHostPort(ds.IP.String(), "80")
	hostCurl := func(timeout string) (string, error) {
		out, err := exec.CommandContext(c, "curl", "-sS", "--connect-timeout", timeout, "--max-time", "10", "http://"+ds.IP.String()+"/").CombinedOutput()
		return string(out), err
	}
	hairpins := count(t, e.dp, redirect.ReasonHairpin)
	for i := range 3 {
		out, err := hostCurl("5")
		if err != nil || !strings.Contains(out, "proxy saw original destination "+orig) {
			cs, _ := e.dp.Counters()
			t.Logf("counters: %+v", cs)
			t.Fatalf("curl %d host -> deathstar:80 = %q, %v; want the proxy to see %s", i, out, err, orig)
		}
		if got := <-seen; !strings.HasPrefix(got, e.topo.HostIP.String()+":") {
			t.Errorf("proxy saw a client at %q; want the host %s", got, e.topo.HostIP)
		}
	}
	// Each connection's SYN and its later packets took the hairpin.
	if got := count(t, e.dp, redirect.ReasonHairpin); got < hairpins+3*3 {
		t.Errorf("hairpin counter = %d; want >= %d", got, hairpins+3*3)
	}
	if out, err := curl(c, e.pods["xwing"], "http://"+ds.IP.String()+"/", "1"); err == nil {
		t.Fatalf("world xwing -> deathstar:80 = %q; want dropped", out)
	}
	// With the proxy gone, hairpinned flows are dropped, not delivered.
	srv.Close()
	ln.Close()
	before := count(t, e.dp, redirect.ReasonNoProxySocket)
	if out, err := hostCurl("1"); err == nil {
		t.Fatalf("with no proxy, host -> deathstar:80 = %q; want dropped", out)
	}
	if got := count(t, e.dp, redirect.ReasonNoProxySocket); got <= before {
		t.Errorf("no-proxy-socket counter = %d; want > %d", got, before)
	}
}

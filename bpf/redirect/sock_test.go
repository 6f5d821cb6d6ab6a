package redirect_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/internal/testenv"
)

func TestMain(m *testing.M) {
	if os.Getenv("WARD_TEST_SOCKPROXY") == "1" {
		sockProxy()
		return
	}
	if spec := os.Getenv("WARD_TEST_DIAL"); spec != "" {
		dialOnce(spec)
		return
	}
	if dir := os.Getenv("WARD_TEST_LOAD_PINDIR"); dir != "" {
		// Run without capabilities by TestLoadWithoutCapabilities.
		dp, err := redirect.Load(redirect.Config{PinDir: dir})
		if err == nil {
			dp.Close()
			fmt.Println("loaded")
			os.Exit(0)
		}
		fmt.Println(err)
		os.Exit(3)
	}
	os.Exit(m.Run())
}

// sockProxy is the child process standing in for Envoy in socket-level
// mode: a plain (non-transparent) listener on 127.0.0.1 that asks
// SO_ORIGINAL_DST for each accepted connection, like Envoy's
// original_dst listener filter, and answers with it.
func sockProxy() {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		orig := "none"
		if rc, err := c.(*net.TCPConn).SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) {
				// sockaddr_in fits the 16+4 bytes of ipv6_mreq.
				mreq, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
				if err != nil {
					orig = "error " + err.Error()
					return
				}
				b := mreq.Multiaddr
				orig = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4])).String()
			})
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				l, err := r.ReadString('\n')
				if err != nil || l == "\r\n" {
					break
				}
			}
			body := "original destination " + orig
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
		}()
	}
}

// dialOnce is the child process of TestSocketLevelIPv6AndChildCgroups:
// it connects an AF_INET ("tcp4") or AF_INET6 ("tcp6", IPv4-mapped
// addresses included) socket to the address and prints "ok" or the error.
func dialOnce(spec string) {
	network, addr, _ := strings.Cut(spec, " ")
	ap := netip.MustParseAddrPort(addr)
	fam := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	if network == "tcp4" {
		fam = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()}
	}
	fd, err := unix.Socket(fam, unix.SOCK_STREAM, 0)
	if err == nil {
		tv := unix.Timeval{Sec: 5}
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
		err = unix.Connect(fd, sa)
		unix.Close(fd)
	}
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("ok")
}

// TestSocketLevel: a host-network workload (its own cgroup) is redirected
// at connect() to the proxy on 127.0.0.1, which learns the original
// destination through SO_ORIGINAL_DST; a denied port fails with EPERM;
// DNS over UDP is redirected and the reply appears to come from the
// original server.
func TestSocketLevel(t *testing.T) {
	for _, shortcut := range []bool{false, true} {
		t.Run(fmt.Sprintf("shortcut=%v", shortcut), func(t *testing.T) { testSocketLevel(t, shortcut) })
	}
}

func testSocketLevel(t *testing.T, shortcut bool) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "curl")
	testenv.RequireCommand(t, "dig")
	if netns.CgroupRoot() == "" {
		t.Skip("no cgroup v2 hierarchy mounted")
	}
	e := newEnv(t, redirect.Config{SockShortcut: shortcut}, map[string]uint32{"deathstar": idDeathstar})
	ds := e.pods["deathstar"]
	if err := e.dp.IPCache().Upsert(netip.PrefixFrom(ds.IP, 32), idDeathstar); err != nil {
		t.Fatal(err)
	}
	wl, err := e.topo.AddCgroup("workload")
	if err != nil {
		t.Fatal(err)
	}
	pcg, err := e.topo.AddCgroup("proxy")
	if err != nil {
		t.Fatal(err)
	}
	c := ctx(t)

	// The proxy process, in its cgroup.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := pcg.Command(c, self)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), "WARD_TEST_SOCKPROXY=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("proxy start: %v", err)
	}
	var proxyPort uint16
	if _, err := fmt.Sscan(line, &proxyPort); err != nil {
		t.Fatalf("proxy said %q", line)
	}
	if err := e.dp.AttachProxyCgroup(pcg.Path); err != nil {
		t.Fatal(err)
	}

	// The DNS stand-in on 127.0.0.1 (UDP needs no SO_ORIGINAL_DST).
	dnsPC, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dnsPC.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := dnsPC.ReadFrom(buf)
			if err != nil {
				return
			}
			if n < 12 {
				continue
			}
			buf[2] |= 0x80
			buf[3] = 0x80
			dnsPC.WriteTo(buf[:n], from)
		}
	}()
	dnsPort := uint16(dnsPC.LocalAddr().(*net.UDPAddr).Port)

	const wlID = 100
	if err := e.dp.SetPolicy(wlID, []redirect.PolicyEntry{
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Egress, Identity: idDeathstar, Port: 80, Proto: redirect.ProtoTCP}, Verdict: redirect.Redirect, ProxyPort: proxyPort},
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Egress, Port: 53, Proto: redirect.ProtoUDP}, Verdict: redirect.Redirect, ProxyPort: dnsPort},
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.dp.AddCgroupEndpoint(redirect.CgroupEndpoint{ID: wlID, CgroupPath: wl.Path, Identity: 2001, EnforceEgress: true}); err != nil {
		t.Fatal(err)
	}
	run := func(name string, args ...string) (string, error) {
		cmd, err := wl.Command(c, name, args...)
		if err != nil {
			t.Fatal(err)
		}
		b, err := cmd.CombinedOutput()
		return string(b), err
	}

	want := "original destination " + netip.AddrPortFrom(ds.IP, 80).String()
	for i := range 2 {
		got, err := run("curl", "-sS", "--max-time", "10", "http://"+ds.IP.String()+"/")
		if err != nil || got != want {
			t.Fatalf("curl %d from the workload cgroup = %q, %v; want %q", i, got, err, want)
		}
	}
	// A dual-stack socket to the IPv4-mapped address is redirected the
	// same way (connect6, sock_ops of a mapped socket).
	if got, err := run("curl", "-gsS", "--max-time", "10", "http://[::ffff:"+ds.IP.String()+"]/"); err != nil || got != want {
		t.Fatalf("curl to the v4-mapped address = %q, %v; want %q", got, err, want)
	}
	// A connect the policy denies fails with EPERM and is reported in the
	// tc programs' ring (no packet exists for tc to report): a drop of
	// the endpoint's egress, the source left to the reader.
	evs := make(chan redirect.Event, 64)
	rc, stopReader := context.WithCancel(c)
	readerDone := make(chan error, 1)
	go func() {
		var st redirect.EventStats
		readerDone <- e.dp.ReadEvents(rc, &st, func(ev *redirect.Event) {
			select {
			case evs <- *ev:
			default:
			}
		})
	}()
	if got, err := run("curl", "-sS", "--max-time", "5", "http://"+ds.IP.String()+":8080/"); err == nil || !strings.Contains(got, "Couldn't connect") {
		t.Fatalf("curl :8080 = %q, %v; want the connect refused by the hook", got, err)
	}
	var drop *redirect.Event
	for drop == nil {
		select {
		case ev := <-evs:
			if ev.Kind == redirect.EventDrop && ev.Destination == netip.AddrPortFrom(ds.IP, 8080) {
				drop = &ev
			}
		case <-c.Done():
			t.Fatal("no drop event for the connect the socket hook denied")
		}
	}
	stopReader()
	if err := <-readerDone; err != nil {
		t.Fatal(err)
	}
	if drop.Reason != redirect.ReasonPolicyDenied || drop.Direction != redirect.Egress || drop.Endpoint != wlID || drop.Proto != redirect.ProtoTCP ||
		drop.DestinationIdentity != idDeathstar || drop.Source.IsValid() || drop.IfIndex != 0 {
		t.Errorf("socket hook drop event = %+v; want a policy-denied egress TCP drop of endpoint %d to identity %d, no source", *drop, wlID, idDeathstar)
	}

	// A wardd restart keeps the cgroup hooks attached and working.
	if err := e.dp.Close(); err != nil {
		t.Fatal(err)
	}
	dp, err := redirect.Load(redirect.Config{PinDir: e.pinDir, SockShortcut: shortcut})
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	e.dp = dp
	t.Cleanup(func() { dp.Close() })
	if got, err := run("curl", "-sS", "--max-time", "10", "http://"+ds.IP.String()+"/"); err != nil || got != want {
		t.Fatalf("curl after restart = %q, %v; want %q", got, err, want)
	}
	got, err := run("curl", "-sS", "--max-time", "10", "http://"+ds.IP.String()+":8080/")
	if err == nil {
		t.Fatalf("curl :8080 = %q; want connect refused by policy", got)
	}
	// The same curl outside the workload cgroup is not redirected (and
	// nothing listens on the pod's :80).
	if out, err := ctxCmd(c, "curl", "-sS", "--max-time", "5", "http://"+ds.IP.String()+"/"); err == nil && strings.Contains(out, "original destination") {
		t.Fatalf("curl outside the cgroup was redirected: %q", out)
	}
	dnsServer := netip.AddrFrom4([4]byte{10, 200, e.topo.Subnet.Addr().As4()[2], 53})
	got, err = run("dig", "@"+dnsServer.String(), "+tries=1", "+time=5", "api.github.com")
	if err != nil || !strings.Contains(got, "status: NOERROR") || !strings.Contains(got, "SERVER: "+dnsServer.String()+"#53") {
		t.Fatalf("dig from the workload = %q, %v; want an answer from %s#53", got, err, dnsServer)
	}
	if n := count(t, e.dp, redirect.ReasonRedirected); n < 3 {
		t.Errorf("redirected counter = %d; want >= 3", n)
	}
	if n := count(t, e.dp, redirect.ReasonSockShortcut); (n > 0) != shortcut {
		t.Errorf("sock-shortcut counter = %d with shortcut %v", n, shortcut)
	}

	if err := e.dp.RemoveCgroupEndpoint(wlID); err != nil {
		t.Fatal(err)
	}
	if err := e.dp.DetachProxyCgroup(pcg.Path); err != nil {
		t.Fatal(err)
	}
	if got, err := run("curl", "-sS", "--max-time", "5", "http://"+ds.IP.String()+"/"); err == nil && strings.Contains(got, "original destination") {
		t.Fatalf("after RemoveCgroupEndpoint still redirected: %q", got)
	}
}

func ctxCmd(c context.Context, name string, args ...string) (string, error) {
	b, err := execCommand(c, name, args...).CombinedOutput()
	return string(b), err
}

var execCommand = exec.CommandContext

// TestLoadWithoutCapabilities: without CAP_BPF & co. Load fails naming
// what is missing, and nothing claims enforcement.
func TestLoadWithoutCapabilities(t *testing.T) {
	testenv.RequireRoot(t)
	setpriv := testenv.RequireCommand(t, "setpriv")
	dir := pinDir(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx(t), setpriv, "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--", self)
	cmd.Env = append(os.Environ(), "WARD_TEST_LOAD_PINDIR="+dir)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("Load without capabilities: %v, %q; want a load error", err, out)
	}
	if !strings.Contains(string(out), "needs CAP_BPF") {
		t.Errorf("error %q does not name the missing capability", out)
	}
}

// TestSocketLevelIPv6AndChildCgroups: in socket-level mode IPv6 sockets
// are checked (IPv4-mapped destinations as IPv4), and so are processes in
// child cgroups of the registered cgroup (issue 12, item 5). Real
// connect() calls from real cgroups.
func TestSocketLevelIPv6AndChildCgroups(t *testing.T) {
	testenv.RequireRoot(t)
	if netns.CgroupRoot() == "" {
		t.Skip("no cgroup v2 hierarchy mounted")
	}
	e := newEnv(t, redirect.Config{}, map[string]uint32{"deathstar": idDeathstar})
	ds := e.pods["deathstar"]
	if err := e.dp.IPCache().Upsert(netip.PrefixFrom(ds.IP, 32), idDeathstar); err != nil {
		t.Fatal(err)
	}
	for _, port := range []string{"80", "8080"} {
		ln, err := ds.Listen("tcp4", ":"+port)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	wl, err := e.topo.AddCgroup("workload6")
	if err != nil {
		t.Fatal(err)
	}
	child := filepath.Join(wl.Path, "child", "grandchild")
	if err := os.MkdirAll(child, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(child)
		os.Remove(filepath.Dir(child))
	})
	const wlID = 200
	if err := e.dp.SetPolicy(wlID, []redirect.PolicyEntry{
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Egress, Identity: idDeathstar, Port: 80, Proto: redirect.ProtoTCP}, Verdict: redirect.Allow},
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.dp.AddCgroupEndpoint(redirect.CgroupEndpoint{ID: wlID, CgroupPath: wl.Path, Identity: 2001, EnforceEgress: true}); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := ctx(t)
	dial := func(cgroup, network, addr string) string {
		t.Helper()
		dir, err := os.Open(cgroup)
		if err != nil {
			t.Fatal(err)
		}
		defer dir.Close()
		cmd := exec.CommandContext(c, self)
		cmd.Env = append(os.Environ(), "WARD_TEST_DIAL="+network+" "+addr)
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("dial child: %v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	allowed := netip.AddrPortFrom(ds.IP, 80).String()
	denied := netip.AddrPortFrom(ds.IP, 8080).String()
	mapped := func(port uint16) string {
		return netip.AddrPortFrom(netip.AddrFrom16(ds.IP.As16()), port).String()
	}
	for _, tc := range []struct {
		name, cgroup, network, addr string
		ok                          bool
	}{
		{"ipv4 allowed", wl.Path, "tcp4", allowed, true},
		{"ipv4 denied", wl.Path, "tcp4", denied, false},
		{"v4-mapped allowed", wl.Path, "tcp6", mapped(80), true},
		{"v4-mapped denied", wl.Path, "tcp6", mapped(8080), false},
		{"native ipv6 denied", wl.Path, "tcp6", "[fd00:dead::1]:80", false},
		{"child cgroup allowed", filepath.Dir(child), "tcp4", allowed, true},
		{"child cgroup denied", filepath.Dir(child), "tcp4", denied, false},
		{"grandchild v4-mapped denied", child, "tcp6", mapped(8080), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := dial(tc.cgroup, tc.network, tc.addr)
			if tc.ok && got != "ok" {
				t.Errorf("dial %s %s = %q; want ok", tc.network, tc.addr, got)
			}
			if !tc.ok && !strings.Contains(got, "operation not permitted") {
				t.Errorf("dial %s %s = %q; want EPERM from policy", tc.network, tc.addr, got)
			}
		})
	}
	// A registered cgroup deeper than the ancestor search reaches (level
	// 16) with no registered ancestor: its own tasks are found, its
	// descendants' are not, and those are denied rather than allowed.
	deeproot, err := e.topo.AddCgroup("deep")
	if err != nil {
		t.Fatal(err)
	}
	deep := deeproot.Path + strings.Repeat("/d", 17)
	if err := os.MkdirAll(deep+"/child", 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for p := deep + "/child"; p != deeproot.Path; p = filepath.Dir(p) {
			os.Remove(p)
		}
	})
	if err := e.dp.SetPolicy(wlID+1, []redirect.PolicyEntry{
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Egress, Identity: idDeathstar, Port: 80, Proto: redirect.ProtoTCP}, Verdict: redirect.Allow},
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.dp.AddCgroupEndpoint(redirect.CgroupEndpoint{ID: wlID + 1, CgroupPath: deep, Identity: 2002, EnforceEgress: true}); err != nil {
		t.Fatal(err)
	}
	if got := dial(deep, "tcp4", allowed); got != "ok" {
		t.Errorf("dial from the deep registered cgroup = %q; want ok", got)
	}
	before := count(t, e.dp, redirect.ReasonNoCgroupEndpoint)
	if got := dial(deep+"/child", "tcp4", allowed); !strings.Contains(got, "operation not permitted") {
		t.Errorf("dial from below the deep cgroup = %q; want EPERM (no endpoint found)", got)
	}
	if n := count(t, e.dp, redirect.ReasonNoCgroupEndpoint); n != before+1 {
		t.Errorf("no-cgroup-endpoint counter %d -> %d; want +1", before, n)
	}

	// Outside the registered cgroup nothing is checked.
	if got := dial(netns.CgroupRoot(), "tcp4", denied); got != "ok" {
		t.Errorf("dial from the root cgroup = %q; want ok (not a workload)", got)
	}
}

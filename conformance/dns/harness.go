// Package dns is the DNS conformance harness: a real resolver (unbound,
// Debian) serving a test zone on a free loopback port, and dig as the
// client, so ward's DNS proxy is tested against peers it does not control.
//
// Invariants: every process and file the harness creates belongs to the
// test that asked for it and is removed by t.Cleanup, also on failure;
// nothing listens outside loopback (or the test's own namespaces).
package dns

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/wardproxy/ward/internal/testenv"
)

// Zone is a test zone file body: names relative to Origin.
type Zone struct {
	Origin string // e.g. "github.test."
	Body   string // zone file lines after $ORIGIN and $TTL
}

// Mediabot is the seed's mediabot scenario moved to a test zone:
// api.github.test (several A records), support.github.test, the bare
// github.test, a CNAME chain (www → edge → lb, lowest TTL 20 s), a name
// with a 2 s TTL (short) and an IPv6 name.
var Mediabot = Zone{
	Origin: "github.test.",
	Body: `@       IN SOA ns.github.test. admin.github.test. 1 3600 600 86400 60
@       IN NS    ns.github.test.
@       IN A     192.0.2.4
ns      IN A     192.0.2.53
api     IN A     192.0.2.1
api     IN A     192.0.2.2
api     IN A     192.0.2.3
support IN A     192.0.2.10
www 300 IN CNAME edge
edge 20 IN CNAME lb
lb      IN A     192.0.2.20
short 2 IN A     192.0.2.30
v6      IN AAAA  2001:db8::6
`,
}

// Unbound is a running unbound.
type Unbound struct {
	Addr netip.AddrPort // UDP and TCP
	Dir  string
}

// UnboundConfig says where unbound listens; the zero value is a free port
// on 127.0.0.1.
type UnboundConfig struct {
	// Addr, when valid, is the address to listen on (e.g. port 53 of an
	// address inside a test namespace).
	Addr netip.AddrPort
	// Wrap runs unbound through a command prefix, e.g.
	// ["ip", "netns", "exec", "ns1"].
	Wrap []string
}

// StartUnbound runs unbound serving zone (authoritatively, CNAMEs chased
// inside the zone) until the test ends. Other names go to unbound's
// iterator, which has no network here: the tests never let one through.
func StartUnbound(t testing.TB, zone Zone, cfg UnboundConfig) *Unbound {
	t.Helper()
	bin := testenv.RequireCommand(t, "unbound")
	dir := t.TempDir()
	zf := filepath.Join(dir, "zone")
	if err := os.WriteFile(zf, []byte("$ORIGIN "+zone.Origin+"\n$TTL 60\n"+zone.Body), 0o644); err != nil {
		t.Fatal(err)
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		addr := cfg.Addr
		if !addr.IsValid() {
			addr = freePort(t)
		}
		conf := filepath.Join(dir, "unbound.conf")
		text := fmt.Sprintf(`server:
  interface: %[1]s@%[2]d
  port: %[2]d
  do-daemonize: no
  username: ""
  chroot: ""
  directory: %[3]q
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  do-ip6: %[6]s
  num-threads: 1
  module-config: "iterator"
  access-control: 0.0.0.0/0 allow
  access-control: ::/0 allow
  local-zone: "test." nodefault
  local-zone: "%[4]s" nodefault
auth-zone:
  name: %[4]q
  zonefile: %[5]q
  for-downstream: yes
  for-upstream: yes
remote-control:
  control-enable: no
`, addr.Addr(), addr.Port(), dir, zone.Origin, zf, map[bool]string{false: "no", true: "yes"}[addr.Addr().Is6()])
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		args := append(append([]string{}, cfg.Wrap...), bin, "-d", "-c", conf)
		cmd := exec.Command(args[0], args[1:]...)
		logf, err := os.Create(filepath.Join(dir, "unbound.log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		// unbound dies with the test process, even when a test timeout
		// panics past t.Cleanup.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			logf.Close()
			t.Fatalf("start unbound: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait(); logf.Close() }()
		u := &Unbound{Addr: addr, Dir: dir}
		if err := waitReady(addr, zone.Origin, cfg.Wrap, exited); err != nil {
			_ = cmd.Process.Kill()
			<-exited
			log, _ := os.ReadFile(filepath.Join(dir, "unbound.log"))
			lastErr = fmt.Errorf("unbound on %s not ready: %w\n%s", addr, err, log)
			continue
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-exited
		})
		return u
	}
	t.Fatal(lastErr)
	return nil
}

// waitReady polls the server until it answers for origin's SOA; a server
// in another namespace (wrap set) is polled with dig through wrap.
func waitReady(addr netip.AddrPort, origin string, wrap []string, exited <-chan error) error {
	deadline := time.Now().Add(30 * time.Second)
	c := &mdns.Client{Timeout: 500 * time.Millisecond}
	q := new(mdns.Msg)
	q.SetQuestion(origin, mdns.TypeSOA)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("exited: %v", err)
		default:
		}
		if wrap != nil {
			argv := append(append([]string{}, wrap...), "dig", "@"+addr.Addr().String(), "-p", fmt.Sprint(addr.Port()),
				"+tries=1", "+time=1", origin, "SOA")
			out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
			if err == nil && ParseDig(string(out)).Status == "NOERROR" {
				return nil
			}
		} else if r, _, err := c.Exchange(q, addr.String()); err == nil && r.Rcode == mdns.RcodeSuccess {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("no answer within 30s")
}

// freePort returns a loopback address whose UDP and TCP port were both
// free a moment ago.
func freePort(t testing.TB) netip.AddrPort {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ap := netip.MustParseAddrPort(pc.LocalAddr().String())
		l, err := net.Listen("tcp", ap.String())
		pc.Close()
		if err != nil {
			continue
		}
		l.Close()
		return ap
	}
	t.Fatal("no free loopback port")
	return netip.AddrPort{}
}

// DigResult is what dig printed.
type DigResult struct {
	Status  string   // NOERROR, REFUSED, NXDOMAIN, …
	Flags   []string // header flags: qr, aa, rd, ra, tc
	Answers []RR     // the answer section
	EDNS    bool     // an OPT pseudosection was present
	Output  string
}

// RR is one answer line.
type RR struct {
	Name string
	TTL  uint32
	Type string
	Data string
}

// IPs returns the A and AAAA data of the answer.
func (r *DigResult) IPs() []string {
	var out []string
	for _, rr := range r.Answers {
		if rr.Type == "A" || rr.Type == "AAAA" {
			out = append(out, rr.Data)
		}
	}
	return out
}

var (
	headerRE = regexp.MustCompile(`status: ([A-Z]+),`)
	flagsRE  = regexp.MustCompile(`;; flags: ([a-z ]+);`)
)

// Dig runs dig against server for name (type A unless args give one),
// with extra args such as "+tcp" or "AAAA". wrap is a command prefix
// (e.g. `ip netns exec ns`), nil to run here.
func Dig(t testing.TB, wrap []string, server netip.AddrPort, name string, args ...string) *DigResult {
	t.Helper()
	bin := testenv.RequireCommand(t, "dig")
	argv := append(append([]string{}, wrap...), bin, "@"+server.Addr().String(), "-p", fmt.Sprint(server.Port()),
		"+tries=3", "+time=5", name)
	argv = append(argv, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return ParseDig(string(out))
}

// ParseDig parses dig's default output.
func ParseDig(out string) *DigResult {
	r := &DigResult{Output: out}
	if m := headerRE.FindStringSubmatch(out); m != nil {
		r.Status = m[1]
	}
	if m := flagsRE.FindStringSubmatch(out); m != nil {
		r.Flags = strings.Fields(m[1])
	}
	r.EDNS = strings.Contains(out, "OPT PSEUDOSECTION")
	sc := bufio.NewScanner(strings.NewReader(out))
	inAnswer := false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, ";; ANSWER SECTION:"):
			inAnswer = true
		case strings.TrimSpace(line) == "" || strings.HasPrefix(line, ";"):
			inAnswer = false
		case inAnswer:
			f := strings.Fields(line)
			if len(f) >= 5 {
				ttl, err := strconv.ParseUint(f[1], 10, 32)
				if err != nil {
					continue // not a record line
				}
				r.Answers = append(r.Answers, RR{Name: f[0], TTL: uint32(ttl), Type: f[3], Data: strings.Join(f[4:], " ")})
			}
		}
	}
	return r
}

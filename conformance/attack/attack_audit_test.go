package attack

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wardproxy/ward/agent/api"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/internal/testenv"
)

// attackerEgressToVictim80: the attacker may reach the victim's port 80
// only (default deny for the rest of its egress).
const attackerEgressToVictim80 = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: attacker-egress}
spec:
  endpointSelector: {matchLabels: {app: attacker}}
  egress:
  - toEndpoints: [{matchLabels: {app: victim}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
`

// TestAttackAuditSocket: a process of the node that is not root (uid
// 65534) cannot put its endpoint in policy audit mode through wardd's
// status socket (`ward endpoint config ID audit=on`) nor reach any other
// socket of the state directory (xDS, flows, Hubble, Envoy's admin) —
// even when the state directory is open for traversal (a /run directory
// made by a package) and wardd started under umask 0: the sockets' modes
// must not depend on the umask. Audit mode on a nonexistent endpoint id
// is an error naming it; the attacker's denied port stays denied.
func TestAttackAuditSocket(t *testing.T) {
	testenv.RequireRoot(t)
	ward := testenv.File(t, "build/bin/ward", "run `make build`")
	n := node.New(t, pods...)
	echoPath(t, n, "victim", ":80", ":8080")
	n.WritePolicy(t, "attacker.yaml", attackerEgressToVictim80)
	old := syscall.Umask(0)
	n.Start(t, 39520, 9732)
	ctx, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stop()
	node.Eventually(t, "the status socket", func() bool {
		_, err := os.Stat(filepath.Join(n.StateDir, api.Socket))
		return err == nil
	})
	syscall.Umask(old)
	// The state directory and its parents traversable by everyone.
	for d := n.StateDir; d != "/"; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, fi.Mode().Perm()|0o055); err != nil {
			t.Fatal(err)
		}
	}
	victim := "http://" + n.Pods["victim"].IP.String()
	node.Eventually(t, "the attacker's egress policy", func() bool {
		return n.Curl(ctx, "attacker", victim+"/") == "/" && n.Curl(ctx, "attacker", victim+":8080/") != "/"
	})
	var id uint64
	for _, e := range n.Agent.Status().Endpoints {
		if e.Name == "attacker" || strings.HasSuffix(e.Name, "/attacker") {
			id = e.ID
		}
	}
	if id == 0 {
		t.Fatalf("no attacker endpoint in %+v", n.Agent.Status().Endpoints)
	}
	nobody := func(name string, args ...string) *exec.Cmd {
		c := exec.CommandContext(ctx, name, args...)
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		return c
	}
	if out, err := nobody(ward, "endpoint", "config", strconv.FormatUint(id, 10), "audit=on", "--state-dir", n.StateDir).CombinedOutput(); err == nil {
		t.Errorf("ward endpoint config %d audit=on as uid 65534 succeeded: %s", id, out)
	}
	socks, _ := filepath.Glob(filepath.Join(n.StateDir, "*.sock"))
	if len(socks) < 2 {
		t.Fatalf("state directory sockets %q", socks)
	}
	for _, s := range socks {
		fi, err := os.Stat(s)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o007 != 0 {
			t.Errorf("%s has mode %v: others may connect", filepath.Base(s), fi.Mode().Perm())
		}
		// connect(2) as uid 65534.
		out, err := nobody("curl", "-sS", "--max-time", "5", "--unix-socket", s, "http://wardd"+api.StatusPath).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "onnect") {
			t.Errorf("uid 65534 connected to %s: %v %s", filepath.Base(s), err, out)
		}
	}
	for _, e := range n.Agent.Status().Endpoints {
		if e.ID == id && e.Audit {
			t.Errorf("endpoint %d is in audit mode", id)
		}
	}
	if got := n.Curl(ctx, "attacker", victim+":8080/"); got == "/" {
		t.Errorf("the attacker reached the victim's denied port 8080")
	}

	// A nonexistent endpoint (as root): an error naming it, nothing
	// changed.
	const missing = 987654
	out, err := exec.CommandContext(ctx, ward, "endpoint", "config", fmt.Sprint(missing), "audit=on", "--state-dir", n.StateDir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), fmt.Sprint(missing)) {
		t.Errorf("ward endpoint config %d audit=on: %v %s; want an error naming the endpoint", missing, err, out)
	}
}

// TestAttackAuditOffMidConnection: connections opened while the
// attacker's endpoint was in audit mode do not keep audit's verdicts once
// audit is off: on a keep-alive connection through its egress L7 rule the
// next denied request is refused (403), and a connection to a port its
// L4 policy denies carries no further request to the victim.
func TestAttackAuditOffMidConnection(t *testing.T) {
	ward := testenv.File(t, "build/bin/ward", "run `make build`")
	n := node.New(t, pods...)
	echoPath(t, n, "victim", ":80", ":8080")
	n.WritePolicy(t, "attacker.yaml", attackerL7)
	n.Start(t, 39530, 9733)
	ctx, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stop()
	victim := n.Pods["victim"].IP.String()
	var id uint64
	for _, e := range n.Agent.Status().Endpoints {
		if e.Name == "attacker" {
			id = e.ID
		}
	}
	if id == 0 {
		t.Fatalf("no attacker endpoint in %+v", n.Agent.Status().Endpoints)
	}
	audit := func(on string) {
		t.Helper()
		if out, err := exec.CommandContext(ctx, ward, "endpoint", "config", fmt.Sprint(id), "audit="+on, "--state-dir", n.StateDir).CombinedOutput(); err != nil {
			t.Fatalf("ward endpoint config %d audit=%s: %v %s", id, on, err, out)
		}
	}
	curl := func(url string) string {
		return strings.Join(strings.Fields(n.Curl(ctx, "attacker", "-w", " %{http_code}", url)), " ")
	}
	// request sends GET path on a kept-alive connection and returns the
	// answer ("error" when none came).
	request := func(c net.Conn, rd *bufio.Reader, path string) string {
		c.SetDeadline(time.Now().Add(5 * time.Second)) // bounds a dropped request, not a timing assertion
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: victim\r\n\r\n", path); err != nil {
			return "error"
		}
		resp, err := http.ReadResponse(rd, nil)
		if err != nil {
			return "error"
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return strings.TrimSpace(string(b)) + " " + strconv.Itoa(resp.StatusCode)
	}
	node.Eventually(t, "the L7 rule in force", func() bool { return curl("http://"+victim+"/secret") == deniedAnswer })
	audit("on")
	node.Eventually(t, "audit mode in force", func() bool {
		return curl("http://"+victim+"/secret") == bypassAnswer && curl("http://"+victim+":8080/x") == "/x 200"
	})
	dial := func(port string) (net.Conn, *bufio.Reader) {
		c, err := n.Pods["attacker"].Dial(ctx, "tcp", net.JoinHostPort(victim, port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}
	l7, l7rd := dial("80")
	l4, l4rd := dial("8080")
	if got := request(l7, l7rd, "/secret"); got != bypassAnswer {
		t.Fatalf("in audit mode, GET /secret on the kept-alive connection = %q; want %q", got, bypassAnswer)
	}
	if got := request(l4, l4rd, "/first"); got != "/first 200" {
		t.Fatalf("in audit mode, GET :8080/first = %q; want it answered", got)
	}
	audit("off")
	node.Eventually(t, "audit mode off in force", func() bool {
		return curl("http://"+victim+"/secret") == deniedAnswer && curl("http://"+victim+":8080/y") == "error"
	})
	if got := request(l7, l7rd, "/secret"); got == bypassAnswer {
		t.Errorf("after audit off, GET /secret on the connection opened in audit mode = %q; want it denied", got)
	}
	if got := request(l4, l4rd, "/second"); got == "/second 200" {
		t.Errorf("after audit off, GET :8080/second on the connection opened in audit mode = %q; want it dropped", got)
	}
}

package attack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/internal/testenv"
)

// listeningTCP returns the TCP ports pid listens on: the LISTEN sockets of
// /proc/PID/net/tcp and tcp6 whose inodes are among pid's open fds.
func listeningTCP(t *testing.T, pid int) []int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var ports []int
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 10 || fs[3] != "0A" || !inodes[fs[9]] { // 0A: TCP_LISTEN
				continue
			}
			_, hexPort, _ := strings.Cut(fs[1], ":")
			p, err := strconv.ParseUint(hexPort, 16, 16)
			if err != nil {
				t.Fatalf("%s: local address %q: %v", f, fs[1], err)
			}
			ports = append(ports, int(p))
		}
	}
	return ports
}

// adminAnswers reports whether an Envoy admin interface answers on
// 127.0.0.1:port (its /server_info names the command line options).
func adminAnswers(port int) bool {
	cl := &http.Client{Timeout: 3 * time.Second}
	resp, err := cl.Get(fmt.Sprintf("http://127.0.0.1:%d/server_info", port))
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return strings.Contains(string(b), "command_line_options")
}

// TestAttackEnvoyAdmin: a host process (or hostNetwork pod) that is not
// root cannot reach Envoy's admin interface, which can quit or drain
// Envoy, change its runtime and turn on trace logs (headers included).
// With wardd's default configuration no TCP socket of Envoy answers as
// the admin (127.0.0.1:9901 included), and the admin's unix socket is
// root's, mode 0600: nobody (uid 65534) cannot use it — not even with
// the state directory opened to everyone — while root can. Fails against
// 0c4dab0^ (the admin listened on 127.0.0.1 over TCP).
func TestAttackEnvoyAdmin(t *testing.T) {
	testenv.RequireCommand(t, "setpriv")
	n := node.New(t, pods...)
	n.Config.Envoy.Admin = "" // wardd's default
	echoPath(t, n, "victim", ":80")
	n.WritePolicy(t, "attacker.yaml", attackerL7)
	n.Start(t, 27600, 9113)
	c, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stop()
	e := n.Agent.Status().Envoy
	if e == nil || !alive(e.PID) {
		t.Fatalf("status envoy = %+v; want a running Envoy", e)
	}
	ports := listeningTCP(t, e.PID)
	if len(ports) == 0 {
		t.Fatalf("envoy %d listens on no TCP port; want its proxy listeners (is /proc read right?)", e.PID)
	}
	if !slices.Contains(ports, 9901) {
		ports = append(ports, 9901)
	}
	for _, p := range ports {
		if adminAnswers(p) {
			t.Errorf("Envoy's admin answers on 127.0.0.1:%d", p)
		}
	}

	sock := filepath.Join(n.StateDir, "envoy-admin.sock")
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatalf("admin socket: %v", err)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 || !ok || sys.Uid != 0 {
		t.Errorf("admin socket %s: mode %v; want a socket owned by root with mode 0600", sock, st.Mode())
	}
	curl := func(args ...string) (string, error) {
		out, err := exec.CommandContext(c, args[0], args[1:]...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := curl("curl", "-sS", "--max-time", "5", "--unix-socket", sock, "http://admin/ready"); err != nil || out != "LIVE" {
		t.Fatalf("root: admin /ready over the unix socket = %q, %v; want LIVE", out, err)
	}
	// Only the socket's own mode stands in the way of nobody now.
	if err := os.Chmod(n.StateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	nobody := []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-sS", "--max-time", "5", "--unix-socket", sock}
	if out, err := curl(append(nobody[:len(nobody)-2:len(nobody)-2], "--version")...); err != nil {
		t.Fatalf("curl as nobody does not run: %v: %s", err, out)
	}
	for _, req := range [][]string{
		{"http://admin/server_info"},
		{"-X", "POST", "http://admin/logging?level=trace"},
		{"-X", "POST", "http://admin/quitquitquit"},
	} {
		// curl exits 7 when it cannot connect (EACCES on the socket).
		var ee *exec.ExitError
		if out, err := curl(append(nobody, req...)...); !errors.As(err, &ee) || ee.ExitCode() != 7 {
			t.Errorf("nobody: curl %s over the admin socket = %q, %v; want refused (curl exit 7)", strings.Join(req, " "), out, err)
		}
	}
	if !alive(e.PID) {
		t.Errorf("envoy %d is gone after nobody's /quitquitquit", e.PID)
	}
	if got := n.Curl(c, "attacker", "-w", " %{http_code}", "http://"+n.Pods["victim"].IP.String()+"/secret"); got != deniedAnswer {
		t.Errorf("after nobody's admin requests: GET /secret = %q; want %q", got, deniedAnswer)
	}
}

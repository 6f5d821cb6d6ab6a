package deploy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/wardproxy/ward/internal/testenv"
)

// container is a rendered container's command, environment and added
// capabilities.
type container struct {
	command []string
	env     map[string]string
	caps    []string
}

// renderedContainer finds a container (or init container) of a DaemonSet
// in manifests/ward.yaml.
func renderedContainer(t *testing.T, daemonSet, name string) container {
	t.Helper()
	return renderedContainerIn(t, "ward.yaml", daemonSet, name)
}

// renderedContainerIn is renderedContainer in another rendering.
func renderedContainerIn(t *testing.T, file, daemonSet, name string) container {
	t.Helper()
	for _, o := range manifest(t, file) {
		if o.GetKind() != "DaemonSet" || o.GetName() != daemonSet {
			continue
		}
		for _, field := range []string{"initContainers", "containers"} {
			cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", field)
			for _, c := range cs {
				c := c.(map[string]any)
				if c["name"] != name {
					continue
				}
				out := container{env: map[string]string{}}
				out.command, _, _ = unstructured.NestedStringSlice(c, "command")
				out.caps, _, _ = unstructured.NestedStringSlice(c, "securityContext", "capabilities", "add")
				envs, _, _ := unstructured.NestedSlice(c, "env")
				for _, e := range envs {
					e := e.(map[string]any)
					if v, ok := e["value"].(string); ok {
						out.env[e["name"].(string)] = v
					}
				}
				return out
			}
		}
	}
	t.Fatalf("no container %s in DaemonSet %s", name, daemonSet)
	return container{}
}

// built caches the commands the tests build, once per test binary, in
// binDir (made and removed by TestMain).
var (
	binDir  string
	builtMu sync.Mutex
	built   = map[string]string{}
)

// goBuild builds a command of the module (e.g. "cmd/wardd") once and
// returns its path.
func goBuild(t *testing.T, pkg string) string {
	t.Helper()
	builtMu.Lock()
	defer builtMu.Unlock()
	if p, ok := built[pkg]; ok {
		return p
	}
	out := filepath.Join(binDir, filepath.Base(pkg))
	if b, err := exec.Command("go", "build", "-o", out, "github.com/wardproxy/ward/"+pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	built[pkg] = out
	return out
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestPodsAsRendered runs the three commands of the rendered pods that
// make Envoy work on a node, as the chart wrote them, with the node's
// host paths mapped to folders of the test (the only change: the
// container paths /var/run/ward, /usr/lib/ward and /host/module become
// those folders): Envoy's container starts first and waits; wardd's init
// container installs the production libward.so; wardd (its command line:
// --envoy-external, --node) writes the bootstrap; then Envoy starts from
// it, loads ward.http from the installed library and serves the
// listener wardd gives it, and wardd sees it acknowledged.
func TestPodsAsRendered(t *testing.T) {
	envoyBin := testenv.EnvoyPath(t)
	lib := testenv.File(t, "build/libward.so", "run `make build`")
	dir := t.TempDir()
	state, module := filepath.Join(dir, "state"), filepath.Join(dir, "module")
	for _, d := range []string{state, module} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	paths := strings.NewReplacer("/var/run/ward", state, "/usr/lib/ward/libward.so", lib, "/usr/lib/ward", module, "/host/module", module)
	start := func(name string, c container, extraEnv ...string) *exec.Cmd {
		t.Helper()
		var args []string
		for _, a := range c.command {
			args = append(args, paths.Replace(a))
		}
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(envoyBin)+":"+os.Getenv("PATH"))
		for k, v := range c.env {
			cmd.Env = append(cmd.Env, k+"="+paths.Replace(v))
		}
		cmd.Env = append(cmd.Env, extraEnv...)
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Cleanup(func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			_ = cmd.Wait()
			logf.Close()
			if t.Failed() {
				b, _ := os.ReadFile(logf.Name())
				t.Logf("%s's log:\n%s", name, b)
			}
		})
		return cmd
	}
	install := goBuild(t, "cmd/ward-install")
	wardd := goBuild(t, "cmd/wardd")

	// Envoy's pod first: it must wait for the bootstrap and the library.
	envoyExited := make(chan error, 1)
	envoy := start("envoy", renderedContainer(t, "ward-envoy", "envoy"))
	go func() { envoyExited <- envoy.Wait() }()

	// wardd's init container, then wardd.
	ic := renderedContainer(t, "wardd", "install-module")
	if ic.command[0] != "/usr/bin/ward-install" {
		t.Fatalf("install-module runs %q; want /usr/bin/ward-install", ic.command)
	}
	args := []string{}
	for _, a := range ic.command[1:] {
		args = append(args, paths.Replace(a))
	}
	if out, err := exec.Command(install, args...).CombinedOutput(); err != nil {
		t.Fatalf("install-module %q: %v\n%s", args, err, out)
	}
	select {
	case err := <-envoyExited:
		t.Fatalf("Envoy's container exited before wardd wrote the bootstrap: %v", err)
	default:
	}

	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "upstream") })}
	ul, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go up.Serve(ul)
	t.Cleanup(func() { up.Close() })
	port := freePort(t)
	cfg := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, "listeners:\n- {name: web, kind: http, address: 127.0.0.1, port: %d, upstream: %q, filters: [ward.http]}\n", port, ul.Addr().String()), 0o600); err != nil {
		t.Fatal(err)
	}
	wc := renderedContainer(t, "wardd", "wardd")
	var cmdline []string
	for _, a := range wc.command {
		switch {
		case a == "/usr/bin/wardd":
			a = wardd
		case strings.HasPrefix(a, "--config="):
			a = "--config=" + cfg
		}
		cmdline = append(cmdline, strings.ReplaceAll(a, "$(NODE_NAME)", "node-a"))
	}
	start("wardd", container{command: cmdline, env: map[string]string{}})

	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	var code int
	eventually(t, "Envoy (started by its container's command) to serve wardd's listener", func() bool {
		select {
		case err := <-envoyExited:
			t.Fatalf("Envoy's container exited: %v", err)
		default:
		}
		resp, err := (&http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}).Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		code = resp.StatusCode
		return true
	})
	st, err := status(state)
	if err != nil || len(st.NACKs) != 0 || st.Acked["type.googleapis.com/envoy.config.listener.v3.Listener"] == "" {
		t.Errorf("ward status: acked %v, NACKs %v, %v; want the listener acknowledged, no rejection", st.Acked, st.NACKs, err)
	}
	t.Logf("the listener answered %d through ward.http", code)
}

package redirect_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/internal/testenv"
)

// envoyConfig is a transparent listener (SO_REUSEPORT on, Envoy's
// default) forwarding to the original destination with the ingress-proxy
// mark on its upstream sockets, the way wardd will configure Envoy.
const envoyConfig = `
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: %d}}
static_resources:
  listeners:
  - name: ingress_proxy
    address: {socket_address: {address: 0.0.0.0, port_value: %d}}
    transparent: true
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: orig
          cluster: orig
  clusters:
  - name: orig
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 5s
    upstream_bind_config:
      source_address: {address: 0.0.0.0, port_value: 0}
      socket_options:
      - {level: 1, name: 36, int_value: %d, state: STATE_PREBIND}
`

// TestRedirectToEnvoy: the deathstar scenario with the real Envoy as the
// transparent proxy: tiefighter's port-80 flow is bpf_sk_assign'ed to
// Envoy's listener, Envoy connects to the original destination with the
// ingress-proxy mark, and the datapath lets that upstream in.
func TestRedirectToEnvoy(t *testing.T) {
	envoy := testenv.EnvoyPath(t)
	e := deathstarEnv(t, redirect.Config{})
	ds := e.pods["deathstar"]

	port, adminPort := freePort(t), freePort(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "envoy.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(envoyConfig, adminPort, port, redirect.MarkProxyIngress)), 0o644); err != nil {
		t.Fatal(err)
	}
	c := ctx(t)
	cmd := exec.CommandContext(c, envoy, "-c", cfg, "--disable-hot-restart", "--concurrency", "1", "-l", "warning", "--component-log-level", "upstream:debug,connection:debug,pool:debug,filter:debug")
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("envoy log:\n%s", logs.String())
		}
	})
	// Ready when the admin endpoint says LIVE. (Never probe the
	// transparent listener itself: its original destination would be
	// the listener, and Envoy would proxy to itself in a loop.)
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/ready", adminPort))
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.TrimSpace(string(body)) == "LIVE" {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("envoy never became ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	if err := e.dp.SetPolicy(e.epIDs["deathstar"], []redirect.PolicyEntry{
		{PolicyKey: redirect.PolicyKey{Direction: redirect.Ingress, Identity: idTiefighter, Port: 80, Proto: redirect.ProtoTCP}, Verdict: redirect.Redirect, ProxyPort: uint16(port)},
	}); err != nil {
		t.Fatal(err)
	}
	e.add(t, "deathstar", true, false)
	e.add(t, "tiefighter", false, false)
	e.add(t, "xwing", false, false)

	for i := range 3 {
		out, err := curl(c, e.pods["tiefighter"], "http://"+ds.IP.String()+"/v1/request-landing", "5")
		if err != nil || !strings.Contains(out, "Ship landed at "+ds.IP.String()) {
			cs, _ := e.dp.Counters()
			t.Logf("counters: %+v", cs)
			t.Fatalf("curl %d tiefighter -> deathstar:80 through envoy = %q, %v", i, out, err)
		}
	}
	if n := count(t, e.dp, redirect.ReasonRedirected); n < 3 {
		t.Errorf("redirected = %d; want >= 3", n)
	}
	if n := count(t, e.dp, redirect.ReasonProxy); n < 3 {
		t.Errorf("proxy-upstream = %d; want >= 3 (envoy's marked upstream connections)", n)
	}
	if out, err := curl(c, e.pods["xwing"], "http://"+ds.IP.String()+"/", "1"); err == nil {
		t.Fatalf("xwing -> deathstar:80 = %q; want dropped", out)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

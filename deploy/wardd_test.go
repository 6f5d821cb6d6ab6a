package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"

	"github.com/wardproxy/ward/agent/api"
	"github.com/wardproxy/ward/internal/kubetest"
)

// warddCommand is the rendered wardd container's command line.
func warddCommand(t *testing.T) []string {
	t.Helper()
	for _, o := range manifest(t, "ward.yaml") {
		if o.GetKind() != "DaemonSet" || o.GetName() != "wardd" {
			continue
		}
		cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		for _, c := range cs {
			c := c.(map[string]any)
			if c["name"] == "wardd" {
				cmd, _, _ := unstructured.NestedStringSlice(c, "command")
				return cmd
			}
		}
	}
	t.Fatal("no wardd container in manifests/ward.yaml")
	return nil
}

// status reads wardd's status document from its socket.
func status(stateDir string) (api.Status, error) {
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(stateDir, api.Socket))
	}}}
	resp, err := cl.Get("http://wardd" + api.StatusPath)
	if err != nil {
		return api.Status{}, err
	}
	defer resp.Body.Close()
	var st api.Status
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st, err
}

// eventually polls cond until it holds, failing after a minute.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var cnpResource = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}

// TestWarddWithChartRBAC runs wardd as the chart runs it — the rendered
// command line and node config, authenticated as the chart's ServiceAccount
// with only the chart's RBAC — against a real apiserver, and checks that
// least privilege is enough for everything wardd does there: every
// informer syncs, a valid policy gets its status written (status
// subresource), an invalid one its condition and a Warning Event, a Secret
// of the secrets namespace is mirrored, and nothing is forbidden. (The
// datapath is off: it needs the node's network namespace;
// TestWarddCapabilities loads it with the chart's capabilities.)
func TestWarddWithChartRBAC(t *testing.T) {
	c := kubetest.Shared(t)
	cs, dc := c.Clients(t)
	ctx := context.Background()
	crds, _ := filepath.Glob("helm/ward/crds/*.yaml")
	for _, f := range crds {
		c.ApplyFile(t, f)
	}
	// A namespace and Secret of this run's own: the shared apiserver
	// keeps the previous run's (-count).
	app := fmt.Sprintf("app-%d", time.Now().UnixNano())
	applyObjects(t, c, namespace("ward"), namespace(app))
	var node string
	for _, o := range manifest(t, "ward.yaml") {
		switch o.GetKind() {
		case "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
			applyObjects(t, c, o)
		case "ConfigMap":
			data, _ := o.Object["data"].(map[string]any)
			node, _ = data["node.yaml"].(string)
		}
	}
	waitWardRBAC(t, cs, "ward-secrets")
	tok, err := cs.CoreV1().ServiceAccounts("ward").CreateToken(ctx, "ward", &authnv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for ServiceAccount ward/ward: %v", err)
	}
	kubeconfig := c.KubeconfigFor(t, tok.Status.Token)

	dir := t.TempDir()
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(node), &cfg); err != nil {
		t.Fatal(err)
	}
	delete(cfg, "datapath")
	k, _ := cfg["kubernetes"].(map[string]any)
	if k == nil {
		t.Fatalf("node config without a kubernetes block:\n%s", node)
	}
	k["kubeconfig"] = kubeconfig
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath, stateDir := filepath.Join(dir, "node.yaml"), filepath.Join(dir, "state")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	wardd := goBuild(t, "cmd/wardd")
	var args []string
	for _, a := range warddCommand(t)[1:] {
		switch {
		case strings.HasPrefix(a, "--config="):
			a = "--config=" + cfgPath
		case strings.HasPrefix(a, "--state-dir="):
			a = "--state-dir=" + stateDir
		}
		args = append(args, strings.ReplaceAll(a, "$(NODE_NAME)", "node-a"))
	}
	if !slices.Contains(args, "--envoy-external") || !slices.Contains(args, "--node=node-a") {
		t.Fatalf("wardd's command line %q; want --envoy-external and --node=$(NODE_NAME)", args)
	}
	logPath := filepath.Join(dir, "wardd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(wardd, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("wardd's log:\n%s", out)
		}
	})

	eventually(t, "wardd to sync with the API server", func() bool {
		st, err := status(stateDir)
		return err == nil && st.Kubernetes != nil && st.Kubernetes.Synced && st.Kubernetes.Connected
	})
	if _, err := os.Stat(filepath.Join(stateDir, "envoy-bootstrap.json")); err != nil {
		t.Errorf("no Envoy bootstrap for the Envoy DaemonSet: %v", err)
	}

	c.ApplyYAML(t, strings.ReplaceAll(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: good, namespace: APP}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad, namespace: APP}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{path: "("}]}}]
`, "APP", app))
	if _, err := cs.CoreV1().Secrets("ward-secrets").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: app}, Data: map[string][]byte{"ca.crt": []byte("not checked here")},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	nodeStatus := func(name string) map[string]any {
		o, err := dc.Resource(cnpResource).Namespace(app).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		m, _, _ := unstructured.NestedMap(o.Object, "status", "nodes", "node-a")
		return m
	}
	eventually(t, "the valid policy's status for node-a", func() bool { return nodeStatus("good")["ok"] == true })
	eventually(t, "the invalid policy's status for node-a", func() bool {
		m := nodeStatus("bad")
		return m != nil && m["ok"] == false
	})
	eventually(t, "a Warning Event on the invalid policy", func() bool {
		evs, err := cs.CoreV1().Events(app).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false
		}
		return slices.ContainsFunc(evs.Items, func(e corev1.Event) bool {
			return e.InvolvedObject.Name == "bad" && e.Type == corev1.EventTypeWarning
		})
	})
	eventually(t, "the secrets namespace's Secret mirrored", func() bool {
		_, err := os.Stat(filepath.Join(stateDir, "kube-secrets", "ward-secrets", app, "ca.crt"))
		return err == nil
	})
	st, err := status(stateDir)
	if err != nil || st.Kubernetes == nil || st.Kubernetes.LastError != "" {
		t.Errorf("kubernetes status %+v, %v; want no error", st.Kubernetes, err)
	}
	if out, _ := os.ReadFile(logPath); strings.Contains(strings.ToLower(string(out)), "forbidden") {
		t.Errorf("wardd was refused something under the chart's RBAC:\n%s", out)
	}
}

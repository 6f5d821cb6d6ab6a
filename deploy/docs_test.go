package deploy

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wardproxy/ward/internal/kubetest"
	"github.com/wardproxy/ward/internal/testenv"
)

// docBlocks returns the bodies of docs/kubernetes.md's ```sh blocks by
// their tag (k8s-install, k8s-upgrade, ...).
func docBlocks(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "docs", "kubernetes.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	var tag string
	var body strings.Builder
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case !in && strings.HasPrefix(line, "```"):
			in, tag = true, ""
			body.Reset()
			if w := strings.Fields(strings.TrimPrefix(line, "```")); len(w) == 2 && w[0] == "sh" {
				tag = w[1]
			}
		case in && strings.HasPrefix(line, "```"):
			in = false
			if tag != "" {
				out[tag] = body.String()
			}
		case in:
			body.WriteString(line + "\n")
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// runDoc runs a block with bash from the repository's root, with the real
// helm and kubectl (build/bin) talking to c.
func runDoc(t *testing.T, c *kubetest.Cluster, script string) {
	t.Helper()
	root := testenv.Root(t)
	testenv.File(t, "build/bin/kubectl", "run `make setup`")
	testenv.File(t, "build/bin/helm", "run `make setup`")
	home := t.TempDir()
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig(), "HOME="+home,
		"XDG_CACHE_HOME="+filepath.Join(home, "cache"), "XDG_CONFIG_HOME="+filepath.Join(home, "config"), "XDG_DATA_HOME="+filepath.Join(home, "data"),
		"PATH="+filepath.Join(root, "build", "bin")+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	t.Logf("%s%s", script, out)
}

// daemonSets names the DaemonSets in ward's namespace and their first
// container's image and command.
func daemonSets(t *testing.T, cs kubernetes.Interface) map[string]string {
	t.Helper()
	l, err := cs.AppsV1().DaemonSets("ward").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, d := range l.Items {
		c := d.Spec.Template.Spec.Containers[0]
		out[d.Name] = c.Image + " " + strings.Join(c.Command, " ")
	}
	return out
}

// TestKubernetesDoc runs docs/kubernetes.md's commands with the real helm
// and kubectl against a real apiserver: install, upgrade, the cleanup mode
// and uninstall with Helm, then the plain manifests on a fresh cluster,
// and checks what each step leaves. (No kubelet runs here: the pods the
// DaemonSets would make are not; the page's `rollout status` is not run.)
func TestKubernetesDoc(t *testing.T) {
	blocks := docBlocks(t)
	for _, tag := range []string{"k8s-install", "k8s-upgrade", "k8s-cleanup", "k8s-uninstall", "k8s-manifests"} {
		if blocks[tag] == "" {
			t.Fatalf("docs/kubernetes.md has no ```sh %s block", tag)
		}
	}
	c := kubetest.Start(t)
	cs, _ := c.Clients(t)

	runDoc(t, c, blocks["k8s-install"])
	ds := daemonSets(t, cs)
	if !strings.HasPrefix(ds["wardd"], "registry.example.com/ward:") || !strings.Contains(ds["ward-envoy"], "envoyproxy/envoy:v1.40.0") {
		t.Errorf("after install: DaemonSets %q; want wardd from registry.example.com/ward and ward-envoy from the Envoy image", ds)
	}
	cm, err := cs.CoreV1().ConfigMaps("ward").Get(context.Background(), "ward-config", metav1.GetOptions{})
	if err != nil || !strings.Contains(cm.Data["node.yaml"], "clusterName: prod-eu-1") {
		t.Errorf("after install: ward-config %v, %v; want the node config with clusterName prod-eu-1", cm.Data, err)
	}

	runDoc(t, c, blocks["k8s-upgrade"])
	if ds := daemonSets(t, cs); !strings.Contains(ds["ward-envoy"], "--concurrency 2") || !strings.HasPrefix(ds["wardd"], "registry.example.com/ward:") {
		t.Errorf("after upgrade: DaemonSets %q; want Envoy with --concurrency 2, the image value kept", ds)
	}

	runDoc(t, c, blocks["k8s-cleanup"])
	ds = daemonSets(t, cs)
	if _, ok := ds["ward-cleanup"]; !ok || len(ds) != 1 {
		t.Errorf("in cleanup mode: DaemonSets %q; want only ward-cleanup", ds)
	}

	runDoc(t, c, blocks["k8s-uninstall"])
	if ds := daemonSets(t, cs); len(ds) != 0 {
		t.Errorf("after uninstall: DaemonSets %q; want none", ds)
	}
	if _, err := cs.RbacV1().ClusterRoles().Get(context.Background(), "ward", metav1.GetOptions{}); err == nil {
		t.Error("after uninstall: ClusterRole ward still there")
	}

	c2 := kubetest.Start(t)
	cs2, _ := c2.Clients(t)
	runDoc(t, c2, blocks["k8s-manifests"])
	if ds := daemonSets(t, cs2); !strings.HasPrefix(ds["wardd"], "ghcr.io/wardproxy/ward:") || ds["ward-envoy"] == "" {
		t.Errorf("after kubectl apply: DaemonSets %q; want wardd and ward-envoy", ds)
	}
}

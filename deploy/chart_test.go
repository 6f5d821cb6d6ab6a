package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/wardproxy/ward/internal/testenv"
)

// renderings are the committed manifests and the helm arguments that
// render them (the same as render.sh).
var renderings = []struct {
	file string
	args []string
}{
	{file: "ward.yaml"},
	{file: "ward-custom.yaml", args: []string{"-f", "helm/ward/ci/custom-values.yaml"}},
	{file: "ward-cleanup.yaml", args: []string{"--set", "cleanup.enabled=true"}},
}

func helm(t *testing.T, args ...string) []byte {
	t.Helper()
	bin := testenv.File(t, "build/bin/helm", "run `make setup` (scripts/setup.d/80-kube.sh builds helm)")
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return out
}

// render is `helm template` of the chart as render.sh runs it.
func render(t *testing.T, args ...string) []byte {
	t.Helper()
	return helm(t, append([]string{"template", "ward", "helm/ward", "--namespace", "ward", "--kube-version", "1.36.0"}, args...)...)
}

// TestChart: the real helm lints the chart strictly with the default and
// the non-default values, and renders exactly the committed manifests
// (deploy/render.sh refreshes them; scripts/generate.sh --check in CI).
// A misspelled value or a bad one fails the rendering (values.schema.json).
func TestChart(t *testing.T) {
	helm(t, "lint", "--strict", "helm/ward", "--kube-version", "1.36.0")
	helm(t, "lint", "--strict", "helm/ward", "--kube-version", "1.36.0", "-f", "helm/ward/ci/custom-values.yaml")
	for _, r := range renderings {
		t.Run(r.file, func(t *testing.T) {
			got := render(t, r.args...)
			want, err := os.ReadFile(filepath.Join("manifests", r.file))
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(string(want), string(got)); d != "" {
				t.Errorf("manifests/%s is stale (run deploy/render.sh) (-committed +rendered):\n%s", r.file, d)
			}
		})
	}
	bin := testenv.File(t, "build/bin/helm", "run `make setup`")
	for _, tc := range []struct {
		set, want string
	}{
		// values.schema.json: the chart's own values are closed.
		{set: "config.mod=always", want: "'mod' not allowed"},
		{set: "envoy.concurency=2", want: "'concurency' not allowed"},
		{set: "config.mode=strict", want: "/config/mode"},
		{set: "hostPaths.stateDir=var/run/ward", want: "/hostPaths/stateDir"},
	} {
		out, err := exec.Command(bin, "template", "ward", "helm/ward", "--kube-version", "1.36.0", "--set", tc.set).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("helm template --set %s: %v\n%s; want a failure saying %q", tc.set, err, out, tc.want)
		}
	}
}

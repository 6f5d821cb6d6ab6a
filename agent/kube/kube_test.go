package kube

import (
	"os"
	"strings"
	"testing"

	"github.com/wardproxy/ward/internal/kubetest"
)

// TestMain stops the package's shared API server (kubetest.Shared) after
// the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	kubetest.StopShared()
	os.Exit(code)
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string // "" = valid
	}{
		{Config{}, ""},
		{Config{Kubeconfig: "/k", NodeName: "node-1.example", SecretsNamespace: "s", HealthInterval: "1s"}, ""},
		{Config{HealthInterval: "soon"}, "kubernetes.healthInterval"},
		{Config{HealthInterval: "-1s"}, "kubernetes.healthInterval"},
		{Config{SecretsNamespace: "Not_A_NS"}, "kubernetes.secretsNamespace"},
		{Config{NodeName: "a..b"}, "kubernetes.nodeName"},
		{Config{QPS: -1}, "kubernetes.qps"},
		{Config{Burst: -1}, "kubernetes.burst"},
	} {
		err := tc.cfg.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", tc.cfg, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%+v: err %v, want %q", tc.cfg, err, tc.want)
		}
	}
	d := Config{}.WithDefaults("n1")
	if d.NodeName != "n1" || d.SecretsNamespace != DefaultSecretsNamespace || !*d.PolicyStatus || d.healthInterval().Seconds() != 5 {
		t.Errorf("defaults %+v", d)
	}
}

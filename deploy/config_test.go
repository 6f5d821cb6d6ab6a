package deploy

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/wardproxy/ward/agent"
)

// TestNodeConfig: the node configuration each rendering's ConfigMap
// carries is one wardd accepts (agent.LoadConfig: unknown fields and bad
// values refused) and says what the values asked for: the datapath on,
// policies, pods and secrets from Kubernetes with the secrets namespace,
// cluster name, enforcement and audit mode of the values.
func TestNodeConfig(t *testing.T) {
	for _, tc := range []struct {
		file, cluster, secretsNS, mode string
		audit                          bool
	}{
		{file: "ward.yaml", cluster: "default", secretsNS: "ward-secrets", mode: "default"},
		{file: "ward-custom.yaml", cluster: "prod-eu-1", secretsNS: "tls-secrets", mode: "always", audit: true},
	} {
		t.Run(tc.file, func(t *testing.T) {
			var node string
			for _, o := range manifest(t, tc.file) {
				if o.GetKind() == "ConfigMap" && o.GetName() == "ward-config" {
					data, _ := o.Object["data"].(map[string]any)
					node, _ = data["node.yaml"].(string)
				}
			}
			if node == "" {
				t.Fatal("no ward-config ConfigMap with node.yaml")
			}
			p := filepath.Join(t.TempDir(), "node.yaml")
			if err := os.WriteFile(p, []byte(node), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := agent.LoadConfig(p)
			if err != nil {
				t.Fatalf("agent.LoadConfig(ConfigMap node.yaml) = %v\n%s", err, node)
			}
			if !cfg.Datapath.Enabled || cfg.Kubernetes == nil || cfg.Kubernetes.SecretsNamespace != tc.secretsNS || cfg.ClusterName != tc.cluster || cfg.Mode != tc.mode || cfg.PolicyAuditMode != tc.audit {
				t.Errorf("node config = datapath %v, kubernetes %+v, clusterName %q, mode %q, audit %v; want datapath on, secrets namespace %q, cluster %q, mode %q, audit %v",
					cfg.Datapath.Enabled, cfg.Kubernetes, cfg.ClusterName, cfg.Mode, cfg.PolicyAuditMode, tc.secretsNS, tc.cluster, tc.mode, tc.audit)
			}
		})
	}
}

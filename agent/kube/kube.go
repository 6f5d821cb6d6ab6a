// Package kube is the agent's Kubernetes side: the node config's
// kubernetes block (Config), the shared API clients and informer factories
// with their lifecycle and connection state (Client, client.go), the
// CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy source
// (policies.go) and its status writer (status.go), and the cluster
// sources: pods, namespaces, services, nodes, secrets (pods.go and the
// files beside it).
//
// Lifecycle: agent.New builds the Client (New) when the node config has a
// kubernetes block; every source registers its informers on the Client's
// factories (Informers, DynamicInformers) and calls Track for the ones
// that must have synced before the agent publishes; agent.Run runs
// Client.Run in its errgroup, which starts the factories, waits for the
// tracked informers' first list (Synced) and watches the connection to
// the API server (Status) until the agent stops.
package kube

import (
	"errors"
	"fmt"
	"time"
)

// DefaultSecretsNamespace is Cilium's default namespace of the TLS
// secrets policies reference (its tls-secrets-namespace).
const DefaultSecretsNamespace = "cilium-secrets"

// Config is the node config's kubernetes block: with it, the agent takes
// policies, pods, namespaces, services, nodes and secrets from the API
// server (docs/node-config.md, "Kubernetes").
type Config struct {
	// Kubeconfig is the path of a kubeconfig file; empty: in-cluster (the
	// pod's ServiceAccount token and KUBERNETES_SERVICE_HOST/PORT).
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// NodeName is the name of this node's Node object (the pods whose
	// spec.nodeName it is are local endpoints); default the config's
	// node.
	NodeName string `json:"nodeName,omitempty"`
	// SecretsNamespace is where the TLS secrets policies reference are
	// read; default cilium-secrets (Cilium's tls-secrets-namespace).
	SecretsNamespace string `json:"secretsNamespace,omitempty"`
	// PolicyStatus writes each CiliumNetworkPolicy's and
	// CiliumClusterwideNetworkPolicy's status (conditions, this node's
	// entry) and an Event when one is invalid; default true.
	PolicyStatus *bool `json:"policyStatus,omitempty"`
	// HealthInterval is how often the API server is probed (/readyz) to
	// tell whether the agent's view is current (`ward status`); a Go
	// duration, default "5s".
	HealthInterval string `json:"healthInterval,omitempty"`
	// QPS and Burst limit the agent's requests to the API server (client-go's
	// rate limiter); defaults 50 and 100.
	QPS   float32 `json:"qps,omitempty"`
	Burst int     `json:"burst,omitempty"`
}

// Validate reports the block's problems, each naming its field under
// "kubernetes.".
func (c *Config) Validate() error {
	var errs []error
	if c.HealthInterval != "" {
		if d, err := time.ParseDuration(c.HealthInterval); err != nil {
			errs = append(errs, fmt.Errorf("kubernetes.healthInterval: %w", err))
		} else if d <= 0 {
			errs = append(errs, fmt.Errorf("kubernetes.healthInterval %s: want a positive duration", c.HealthInterval))
		}
	}
	if c.QPS < 0 {
		errs = append(errs, fmt.Errorf("kubernetes.qps %v: want 0 (default) or more", c.QPS))
	}
	if c.Burst < 0 {
		errs = append(errs, fmt.Errorf("kubernetes.burst %d: want 0 (default) or more", c.Burst))
	}
	if c.SecretsNamespace != "" && !validDNSLabel(c.SecretsNamespace) {
		errs = append(errs, fmt.Errorf("kubernetes.secretsNamespace %q: not a namespace name (a DNS label)", c.SecretsNamespace))
	}
	if c.NodeName != "" && !validDNSSubdomain(c.NodeName) {
		errs = append(errs, fmt.Errorf("kubernetes.nodeName %q: not a node name (a DNS subdomain)", c.NodeName))
	}
	return errors.Join(errs...)
}

// WithDefaults fills the defaults; node is the config's node name.
func (c Config) WithDefaults(node string) Config {
	if c.NodeName == "" {
		c.NodeName = node
	}
	if c.SecretsNamespace == "" {
		c.SecretsNamespace = DefaultSecretsNamespace
	}
	if c.PolicyStatus == nil {
		t := true
		c.PolicyStatus = &t
	}
	if c.HealthInterval == "" {
		c.HealthInterval = "5s"
	}
	if c.QPS == 0 {
		c.QPS = 50
	}
	if c.Burst == 0 {
		c.Burst = 100
	}
	return c
}

// healthInterval is HealthInterval parsed (validated; default 5 s).
func (c Config) healthInterval() time.Duration {
	if d, err := time.ParseDuration(c.HealthInterval); err == nil && d > 0 {
		return d
	}
	return 5 * time.Second
}

// validDNSLabel: RFC 1123 label (lower case alphanumerics and '-', at most
// 63, alphanumeric at both ends).
func validDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' && i > 0 && i < len(s)-1) {
			return false
		}
	}
	return true
}

// validDNSSubdomain: RFC 1123 subdomain (labels joined by '.', at most 253).
func validDNSSubdomain(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == '.' {
			if !validDNSLabel(s[start:i]) {
				return false
			}
			start = i + 1
		}
	}
	return true
}

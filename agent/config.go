package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/wardproxy/ward/agent/kube"
	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/filters/dns"
	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/xds/npds"
)

// Config is the node configuration: the file `wardd --config` reads
// (YAML or JSON; docs/node-config.md is its reference) plus the settings
// wardd takes from flags (the fields without a JSON name). The zero value
// is a node that serves xDS and supervises Envoy with no listeners.
type Config struct {
	// Node is Envoy's node id; default the host name.
	Node string `json:"node,omitempty"`
	// PolicyDir holds CiliumNetworkPolicy files (watched); relative to the
	// config file. With it, Endpoints are the local workloads.
	PolicyDir string `json:"policyDir,omitempty"`
	// Mode is the enforcement mode: default, always or never (Cilium's
	// enable-policy); default "default".
	Mode string `json:"mode,omitempty"`
	// PolicyAuditMode puts every endpoint in policy audit mode (Cilium's
	// policy-audit-mode): what policy would drop passes and is recorded
	// with verdict AUDIT, at L3/L4 in the datapath and at L7 in the
	// proxies. `ward endpoint config ID audit=on|off` overrides it per
	// endpoint at runtime.
	PolicyAuditMode bool `json:"policyAuditMode,omitempty"`
	// ClusterName is the cluster's name (Cilium's cluster-name; default
	// "default"): every endpoint carries it as the label
	// io.cilium.k8s.policy.cluster unless its labels name a cluster, so
	// policies can select the endpoints of one cluster.
	ClusterName string `json:"clusterName,omitempty"`
	// Labels are label prefixes added to the identity-relevant label
	// filter (Cilium's labels option, its syntax: [source:][!]regexp); a
	// prefix without "!" keeps only the labels some inclusive prefix
	// matches. Labels left out do not make identities and cannot be
	// selected. Changing the filter changes the identities.
	Labels []string `json:"labels,omitempty"`
	// LabelPrefixFile is a Cilium label prefix file (JSON, version 1) whose
	// prefixes replace the default ones; relative to the config file.
	LabelPrefixFile string `json:"labelPrefixFile,omitempty"`
	// Endpoints are the workloads the node knows: local ones (their policy
	// is enforced here) and remote ones (Remote: only their addresses and
	// identities matter).
	Endpoints []Endpoint `json:"endpoints,omitempty"`
	// EndpointsDir holds more endpoints (watched; relative to the config
	// file): every *.yaml, *.yml or *.json file holds one endpoint or a list
	// of them, in the format of Endpoints. Adding, editing or removing a
	// file adds, changes or removes its endpoints without a restart; a file
	// that fails to parse or validate is reported in the status and its
	// endpoints stay as they were.
	EndpointsDir string `json:"endpointsDir,omitempty"`
	// Nodes are the cluster's other nodes with their labels (embedded
	// mode; on Kubernetes they come from Node objects). Their addresses
	// carry the remote-node identity, or with EnableNodeSelectorLabels an
	// identity of their own made of their labels, which fromNodes/toNodes
	// select.
	Nodes []Node `json:"nodes,omitempty"`
	// EnableNodeSelectorLabels gives every node of Nodes its own identity
	// from its labels, as Cilium's --enable-node-selector-labels: without
	// it fromNodes/toNodes select nothing but the remote-node identity.
	EnableNodeSelectorLabels bool `json:"enableNodeSelectorLabels,omitempty"`
	// ToGroups configures the provider that resolves toGroups/fromGroups
	// into derivative policies (groups.go).
	ToGroups *ToGroupsConfig `json:"toGroups,omitempty"`
	// EnableExtendedIPProtocols accepts policies on the IP protocols VRRP
	// and IGMP (no ports), as Cilium's --enable-extended-ip-protocols;
	// without it such policies are refused.
	EnableExtendedIPProtocols bool `json:"enableExtendedIPProtocols,omitempty"`
	// Services are the services toServices selects (embedded mode).
	Services []Service `json:"services,omitempty"`
	// ServicesDir holds more services (watched; relative to the config
	// file), one service or a list per file, like EndpointsDir.
	ServicesDir string `json:"servicesDir,omitempty"`
	// Datapath turns on the eBPF datapath.
	Datapath DatapathConfig `json:"datapath,omitempty"`
	// HostFirewall enforces host policies (nodeSelector) for the node
	// itself on datapath.devices (hostfw.go, docs/host-firewall.md).
	HostFirewall HostFirewallConfig `json:"hostFirewall,omitzero"`
	// DNS tunes the datapath's transparent DNS proxy (dns.Config's JSON
	// form: Cilium 1.18's option names and defaults where Cilium has the
	// option). Its listener settings are the agent's: DNSPort, the state
	// directory's fqdn-state.json.
	DNS dns.Config `json:"dns"`
	// Monitor is the flow stream and its Hubble-compatible Observer API
	// (on by default: StateDir/hubble.sock).
	Monitor MonitorConfig `json:"monitor,omitzero"`
	// Metrics is the Prometheus exposition (off by default).
	Metrics MetricsConfig `json:"metrics,omitzero"`
	// Listeners are static Envoy listeners (without the datapath: clients
	// talk to them directly).
	Listeners []Listener `json:"listeners,omitempty"`
	// SecretsDir holds the secrets that terminatingTLS / originatingTLS
	// reference: one folder per namespace, one per secret name in it, PEM
	// files under the secret's keys (tls.crt, tls.key, ca.crt by default);
	// watched, so a rotation reaches new handshakes. Relative to the config
	// file. Without it, TLS interception rules are left out (the agent
	// logs it with each publish); serverNames-only rules need no secret.
	// headerMatches secrets come from here too (a folder of one file).
	SecretsDir string `json:"secretsDir,omitempty"`
	// Kubernetes takes policies (CiliumNetworkPolicy and
	// CiliumClusterwideNetworkPolicy objects, beside the policy directory)
	// and the cluster's workloads from the API server (agent/kube); nil:
	// none.
	Kubernetes *kube.Config `json:"kubernetes,omitempty"`
	// Policies and Hosts are resolved policies in their wire form
	// (npds.NetworkPolicy and npds.NetworkPolicyHosts in protojson), for
	// setups without a policy directory.
	Policies []json.RawMessage `json:"policies,omitempty"`
	Hosts    []json.RawMessage `json:"hosts,omitempty"`

	// StateDir holds the xDS socket, the status socket, Envoy's bootstrap
	// and log, the FQDN state and the last good policy; default
	// /var/run/ward.
	StateDir string `json:"-"`
	// Envoy says how wardd runs Envoy.
	Envoy EnvoyConfig `json:"-"`
}

// EnvoyConfig says how the agent runs Envoy.
type EnvoyConfig struct {
	// Disabled: serve xDS only; Envoy runs elsewhere.
	Disabled bool
	// External: Envoy runs elsewhere from the bootstrap the agent writes
	// (StateDir/envoy-bootstrap.json) and is not started by it: the
	// Kubernetes Envoy DaemonSet (deploy/helm/ward), whose pod shares the
	// state directory. Binary and ModuleDir are not checked.
	External bool
	// Binary is the envoy executable; default build/envoy or
	// .venv/bin/envoy of the working directory, then $PATH.
	Binary string
	// ModuleDir holds libward.so; default build/ of the working directory.
	ModuleDir string
	// Admin is Envoy's admin address: a unix socket path (default
	// StateDir/envoy-admin.sock, mode 0600 in the 0750 state directory) or
	// a loopback "127.0.0.1:PORT" (reachable by every local process).
	Admin string
	// KeepRunning leaves Envoy running when the agent stops (a rolling
	// restart); the next agent on the same state directory adopts it.
	// Whatever this says, an agent that dies (SIGKILL) leaves Envoy
	// enforcing, and its successor adopts it.
	KeepRunning bool
	// Concurrency is Envoy's worker count; 0: one per core.
	Concurrency int
	// LogLevel is Envoy's log level; default info.
	LogLevel string
	// BaseID keeps several Envoys on one machine apart (tests).
	BaseID int
	// ExtraArgs are appended to Envoy's command line.
	ExtraArgs []string
	// DieWithAgent kills Envoy when the agent's process dies (test
	// harnesses only: wardd's Envoy outlives it).
	DieWithAgent bool
	// Env is extra environment for Envoy (e.g. GOGC for the Go runtime of
	// libward.so).
	Env []string
}

// Endpoint is a workload in embedded mode (no Kubernetes).
type Endpoint struct {
	Name string `json:"name"`
	// ID is the endpoint's number (not its security identity, which the
	// agent derives from its labels); unique per node, not 0.
	ID        uint64            `json:"id"`
	IPs       []string          `json:"ips"`
	Labels    map[string]string `json:"labels,omitempty"`
	Namespace string            `json:"namespace,omitempty"` // default "default"
	// Remote marks a workload of another node (or a client outside ward's
	// control): it gets an identity and its addresses are in the identity
	// table, but no policy is enforced for it here.
	Remote bool `json:"remote,omitempty"`
	// Interface is the host-side interface of a local endpoint (its veth),
	// where the datapath attaches; needed when the datapath is enabled.
	Interface string `json:"interface,omitempty"`
	// Ports are the endpoint's named container ports (a Kubernetes pod's
	// containerPorts): a policy's toPorts port "http" resolves to the port
	// the selected endpoints name "http".
	Ports []ContainerPort `json:"ports,omitempty"`
	// Cgroup is the workload's cgroup v2 directory (its processes and
	// their descendants' cgroups): with datapath.mode socket the
	// socket-level hooks attach there; required for a local endpoint in
	// that mode.
	Cgroup string `json:"cgroup,omitempty"`
}

// Node is another node of the cluster.
type Node struct {
	Name string `json:"name"`
	// Addresses are the node's IPs (or prefixes).
	Addresses []string          `json:"addresses"`
	Labels    map[string]string `json:"labels,omitempty"`
}

// ContainerPort is a named port of an endpoint, as a Kubernetes
// containerPort.
type ContainerPort struct {
	// Name is an IANA service name as Kubernetes requires it: at most 15
	// lower-case letters, digits and '-', at least one letter, no '-' at
	// either end nor two in a row. Unique per endpoint.
	Name string `json:"name"`
	Port uint16 `json:"port"`
	// Protocol is TCP (default), UDP or SCTP.
	Protocol string `json:"protocol,omitempty"`
}

// namedPort converts p (validated) to the repository's form.
func (p ContainerPort) namedPort() (policy.NamedPort, error) {
	proto := policy.ProtocolTCP
	if p.Protocol != "" {
		var err error
		if proto, err = policy.ParseProtocol(p.Protocol); err != nil {
			return policy.NamedPort{}, err
		}
	}
	switch proto {
	case policy.ProtocolTCP, policy.ProtocolUDP, policy.ProtocolSCTP:
	default:
		return policy.NamedPort{}, fmt.Errorf("protocol %q: want TCP, UDP or SCTP", p.Protocol)
	}
	return policy.NamedPort{Name: p.Name, Port: p.Port, Protocol: proto}, nil
}

// validPortName reports whether s is an IANA_SVC_NAME as Kubernetes
// validates container port names: policy.IsSvcName, in lower case.
func validPortName(s string) bool { return s == strings.ToLower(s) && policy.IsSvcName(s) }

// Listener is a static Envoy listener.
type Listener struct {
	Name     string `json:"name"`
	Kind     string `json:"kind"` // "http" or "tcp"
	Address  string `json:"address"`
	Port     uint32 `json:"port"`
	Upstream string `json:"upstream,omitempty"` // "ip:port"; empty with transparent
	// Transparent listeners accept redirected traffic for any destination.
	Transparent bool     `json:"transparent,omitempty"`
	Filters     []string `json:"filters,omitempty"` // ward filters; default per kind
	Endpoint    string   `json:"endpoint,omitempty"`
	Direction   string   `json:"direction,omitempty"`
	PolicyPort  uint16   `json:"policyPort,omitempty"`
	AccessLog   string   `json:"accessLog,omitempty"`
	HTTP2       bool     `json:"http2Upstream,omitempty"`
}

// DatapathConfig turns on the eBPF datapath: the agent loads the programs,
// attaches them to each local endpoint's host-side interface, writes the
// resolved policy into the BPF maps and gives Envoy transparent listeners
// for the proxied ports.
type DatapathConfig struct {
	Enabled bool   `json:"enabled,omitempty"`
	PinDir  string `json:"pinDir,omitempty"` // default /sys/fs/bpf/ward
	// Mode is where the endpoints' egress verdicts are taken: "tc" (the
	// default) on the host side of each endpoint's veth, per packet;
	// "socket" also at the socket, in the cgroup connect/sendmsg hooks of
	// each endpoint's cgroup (Endpoint.Cgroup): a denied connect or
	// datagram fails at once with EPERM instead of being dropped on the
	// wire. tc stays attached in socket mode: ingress (socket hooks see
	// only the workload's own sockets, never a peer's packets), the
	// redirects to the proxies (bpf_sk_assign keeps the original
	// destination, IPv6 included, and reaches the host's proxies from the
	// pod's namespace) and the anti-spoofing check remain its job.
	Mode DatapathMode `json:"mode,omitempty"`
	// RoutingTable and RoutingPriority place the rule that delivers
	// redirected packets to the proxies' sockets (defaults 2004, 9000).
	RoutingTable    int `json:"routingTable,omitempty"`
	RoutingPriority int `json:"routingPriority,omitempty"`
	// HTTPIngressPort and KafkaIngressPort are Envoy's transparent
	// listeners for ingress HTTP and Kafka (defaults 15001, 15003).
	HTTPIngressPort  uint16 `json:"httpIngressPort,omitempty"`
	KafkaIngressPort uint16 `json:"kafkaIngressPort,omitempty"`
	// DNSPort is the transparent DNS proxy (UDP and TCP, default 15053);
	// egress DNS rules redirect there.
	DNSPort uint16 `json:"dnsPort,omitempty"`
	// EgressHTTPBasePort is the first of the per-endpoint egress HTTP
	// listeners (default 15100): the i-th local endpoint's egress HTTP goes
	// to EgressHTTPBasePort+i, whose upstream sockets carry that endpoint's
	// identity mark so the destination's ingress policy sees the source.
	EgressHTTPBasePort uint16 `json:"egressHTTPBasePort,omitempty"`
	// TLSIngressPort is the transparent listener of ingress serverNames
	// and TLS interception rules (default 15002); EgressTLSBasePort the
	// first of the per-endpoint egress ones (default 15300, numbered as
	// the egress HTTP listeners).
	TLSIngressPort    uint16 `json:"tlsIngressPort,omitempty"`
	EgressTLSBasePort uint16 `json:"egressTLSBasePort,omitempty"`
	// EgressKafkaBasePort is the first of the per-endpoint egress Kafka
	// listeners (default 15400): the i-th local endpoint's egress Kafka
	// goes to EgressKafkaBasePort+i, marked with its identity likewise.
	EgressKafkaBasePort uint16 `json:"egressKafkaBasePort,omitempty"`
	AccessLog           string `json:"accessLog,omitempty"`
	// AllowLocalhost lets the node itself (the host identity) reach every
	// local endpoint whatever its ingress policy, as Cilium's
	// allow-localhost, so kubelet's probes keep working under default
	// deny; default true. A rule naming the host on a port (fromEntities:
	// [host] with L7 rules) still decides that port, and deny rules apply.
	AllowLocalhost *bool `json:"allowLocalhost,omitempty"`
	// DisableTCPEarlyDemux turns net.ipv4.tcp_early_demux off in wardd's
	// network namespace at start. L7 ingress for clients on other nodes
	// or outside the cluster needs it: the datapath hands their flows to
	// the proxy on the pod's veth, after the stack's early demux would
	// have matched their packets to the proxy's socket and the forwarding
	// path dropped them (bpf/redirect/README.md, "the hairpin").
	DisableTCPEarlyDemux bool `json:"disableTCPEarlyDemux,omitempty"`
	// Devices are the node's native devices (Cilium's devices option):
	// the interfaces other nodes and the world reach the pods through. The
	// datapath attaches to their tc ingress to hand the packets of L7
	// ingress flows from off the node to the proxy before the stack's TCP
	// early demux can drop them; the alternative to DisableTCPEarlyDemux.
	Devices []string `json:"devices,omitempty"`
	// RemoteNodes are the addresses (or prefixes) of the cluster's other
	// nodes: in the ipcache they carry the remote-node identity
	// (fromEntities: [remote-node]), as the node's own addresses carry the
	// host identity (fromEntities: [host]).
	RemoteNodes []string `json:"remoteNodes,omitempty"`
	// KubeAPIServer are the addresses (or prefixes) of the Kubernetes API
	// server: they carry the kube-apiserver identity
	// (toEntities: [kube-apiserver]); on Kubernetes they come from the
	// default/kubernetes endpoints.
	KubeAPIServer []string `json:"kubeAPIServer,omitempty"`
	// HealthAddresses are the addresses (or prefixes) of the cluster's
	// health endpoints, this node's and the other nodes' (Cilium's
	// cilium-health endpoints, which answer on port 4240): they carry the
	// health identity (reserved:health, 4), so fromEntities/toEntities
	// [health] select exactly them. They win over every other node claim
	// (host, remote-node, kube-apiserver) but not over an endpoint's own
	// address.
	HealthAddresses []string `json:"healthAddresses,omitempty"`
}

// DatapathMode is DatapathConfig.Mode.
type DatapathMode string

// Datapath modes.
const (
	ModeTC     DatapathMode = "tc"
	ModeSocket DatapathMode = "socket"
)

// allowLocalhost reports the AllowLocalhost setting (default true).
func (c DatapathConfig) allowLocalhost() bool { return c.AllowLocalhost == nil || *c.AllowLocalhost }

func (c DatapathConfig) withDefaults() DatapathConfig {
	if c.PinDir == "" {
		c.PinDir = redirect.DefaultPinDir
	}
	if c.HTTPIngressPort == 0 {
		c.HTTPIngressPort = 15001
	}
	if c.KafkaIngressPort == 0 {
		c.KafkaIngressPort = 15003
	}
	if c.DNSPort == 0 {
		c.DNSPort = 15053
	}
	if c.EgressHTTPBasePort == 0 {
		c.EgressHTTPBasePort = 15100
	}
	if c.TLSIngressPort == 0 {
		c.TLSIngressPort = 15002
	}
	if c.EgressTLSBasePort == 0 {
		c.EgressTLSBasePort = 15300
	}
	if c.EgressKafkaBasePort == 0 {
		c.EgressKafkaBasePort = 15400
	}
	return c
}

// LoadConfig reads a node configuration file (YAML or JSON; unknown fields
// are errors) and validates it. A relative PolicyDir is taken relative to
// the file.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	js, err := yaml.YAMLToJSON(b)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	var c Config
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	if c.PolicyDir != "" && !filepath.IsAbs(c.PolicyDir) {
		c.PolicyDir = filepath.Join(filepath.Dir(path), c.PolicyDir)
	}
	if c.EndpointsDir != "" && !filepath.IsAbs(c.EndpointsDir) {
		c.EndpointsDir = filepath.Join(filepath.Dir(path), c.EndpointsDir)
	}
	if c.ServicesDir != "" && !filepath.IsAbs(c.ServicesDir) {
		c.ServicesDir = filepath.Join(filepath.Dir(path), c.ServicesDir)
	}
	if c.LabelPrefixFile != "" && !filepath.IsAbs(c.LabelPrefixFile) {
		c.LabelPrefixFile = filepath.Join(filepath.Dir(path), c.LabelPrefixFile)
	}
	if c.SecretsDir != "" && !filepath.IsAbs(c.SecretsDir) {
		c.SecretsDir = filepath.Join(filepath.Dir(path), c.SecretsDir)
	}
	if c.Kubernetes != nil && c.Kubernetes.Kubeconfig != "" && !filepath.IsAbs(c.Kubernetes.Kubeconfig) {
		c.Kubernetes.Kubeconfig = filepath.Join(filepath.Dir(path), c.Kubernetes.Kubeconfig)
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Validate reports every problem of the configuration, each naming its
// field path.
func (c *Config) Validate() error {
	var errs []error
	names := map[string]bool{}
	for i, l := range c.Listeners {
		p := fmt.Sprintf("listeners[%d]", i)
		if l.Name == "" {
			errs = append(errs, fmt.Errorf("%s.name is required", p))
		} else if names[l.Name] {
			errs = append(errs, fmt.Errorf("%s.name %q is used twice", p, l.Name))
		}
		names[l.Name] = true
		if l.Kind != "http" && l.Kind != "tcp" {
			errs = append(errs, fmt.Errorf("%s.kind %q: want http or tcp", p, l.Kind))
		}
		if _, err := netip.ParseAddr(l.Address); err != nil {
			errs = append(errs, fmt.Errorf("%s.address: %w", p, err))
		}
		if l.Port == 0 || l.Port > 65535 {
			errs = append(errs, fmt.Errorf("%s.port %d out of range", p, l.Port))
		}
		if !l.Transparent {
			if _, err := netip.ParseAddrPort(l.Upstream); err != nil {
				errs = append(errs, fmt.Errorf("%s.upstream: %w", p, err))
			}
		}
	}
	if err := (&policy.Config{Mode: policy.EnforcementMode(c.Mode)}).Validate(); err != nil {
		errs = append(errs, fmt.Errorf("mode: %w", err))
	}
	if _, err := c.labelFilter(); err != nil {
		errs = append(errs, err)
	}
	if err := c.ToGroups.validate("toGroups"); err != nil {
		errs = append(errs, err)
	}
	if c.ClusterName != "" && !validLabelValue(c.ClusterName) {
		errs = append(errs, fmt.Errorf("clusterName %q: not a valid label value (up to 63 of [A-Za-z0-9-_.], alphanumeric at both ends)", c.ClusterName))
	}
	ids := map[uint64]string{}
	for i, ep := range c.Endpoints {
		errs = append(errs, validateEndpoint(ep, fmt.Sprintf("endpoints[%d]", i), c.Datapath.Enabled, ids)...)
	}
	switch c.Datapath.Mode {
	case "", ModeTC:
	case ModeSocket:
		for i, ep := range c.Endpoints {
			if !ep.Remote && ep.Cgroup == "" {
				errs = append(errs, fmt.Errorf("endpoints[%d].cgroup is required with datapath.mode socket (the workload's cgroup v2 directory, where the socket-level hooks attach)", i))
			}
		}
	default:
		errs = append(errs, fmt.Errorf("datapath.mode %q: want tc or socket", c.Datapath.Mode))
	}
	if c.EndpointsDir != "" && !c.resolves() {
		errs = append(errs, errors.New("endpointsDir needs policyDir or kubernetes (endpoints matter only for resolved policy)"))
	}
	svcs := map[string]string{}
	for i, s := range c.Services {
		errs = append(errs, validateService(s, fmt.Sprintf("services[%d]", i), svcs)...)
	}
	for i, n := range c.Nodes {
		if n.Name == "" {
			errs = append(errs, fmt.Errorf("nodes[%d].name is required", i))
		}
		for j, a := range n.Addresses {
			if _, err := parseAddrOrPrefix(a); err != nil {
				errs = append(errs, fmt.Errorf("nodes[%d].addresses[%d]: %w", i, j, err))
			}
		}
	}
	for i, s := range c.Datapath.KubeAPIServer {
		if _, err := parseAddrOrPrefix(s); err != nil {
			errs = append(errs, fmt.Errorf("datapath.kubeAPIServer[%d]: %w", i, err))
		}
	}
	for i, s := range c.Datapath.RemoteNodes {
		if _, err := parseAddrOrPrefix(s); err != nil {
			errs = append(errs, fmt.Errorf("datapath.remoteNodes[%d]: %w", i, err))
		}
	}
	for i, s := range c.Datapath.HealthAddresses {
		if _, err := parseAddrOrPrefix(s); err != nil {
			errs = append(errs, fmt.Errorf("datapath.healthAddresses[%d]: %w", i, err))
		}
	}
	// The DNS tunables, checked with the listener settings the agent gives.
	d := c.DNS
	d.UDPAddr, d.Transparent = "0.0.0.0:0", true
	if err := d.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("dns: %w", err))
	}
	if c.Datapath.Enabled && !c.resolves() {
		errs = append(errs, errors.New("datapath.enabled needs policyDir or kubernetes (the datapath enforces resolved policy)"))
	}
	if c.resolves() && (len(c.Policies) > 0 || len(c.Hosts) > 0) {
		errs = append(errs, errors.New("policies/hosts (wire form) are exclusive with policyDir and kubernetes"))
	}
	if c.Kubernetes != nil {
		if err := c.Kubernetes.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	for i, raw := range c.Policies {
		if err := protojson.Unmarshal(raw, &npds.NetworkPolicy{}); err != nil {
			errs = append(errs, fmt.Errorf("policies[%d]: %w", i, err))
		}
	}
	for i, raw := range c.Hosts {
		if err := protojson.Unmarshal(raw, &npds.NetworkPolicyHosts{}); err != nil {
			errs = append(errs, fmt.Errorf("hosts[%d]: %w", i, err))
		}
	}
	errs = append(errs, c.validateObserve())
	errs = append(errs, c.validateHostFirewall())
	return errors.Join(errs...)
}

// resolves reports whether the agent resolves policy itself (a policy
// directory or Kubernetes as a source), rather than serving wire-form
// policies.
func (c *Config) resolves() bool { return c.PolicyDir != "" || c.Kubernetes != nil }

// validateEndpoint checks one endpoint (path names it in errors); ids
// holds the ids seen so far and where.
func validateEndpoint(ep Endpoint, p string, datapath bool, ids map[uint64]string) []error {
	var errs []error
	if ep.ID == 0 {
		errs = append(errs, fmt.Errorf("%s.id is required", p))
	} else if prev, ok := ids[ep.ID]; ok {
		errs = append(errs, fmt.Errorf("%s.id %d is already used by %s", p, ep.ID, prev))
	} else {
		ids[ep.ID] = p
	}
	for j, s := range ep.IPs {
		if _, err := netip.ParseAddr(s); err != nil {
			errs = append(errs, fmt.Errorf("%s.ips[%d]: %w", p, j, err))
		}
	}
	if datapath && !ep.Remote && ep.Interface == "" {
		errs = append(errs, fmt.Errorf("%s.interface is required with the datapath enabled", p))
	}
	if datapath && !ep.Remote {
		var addrs []netip.Addr
		for _, s := range ep.IPs {
			if a, err := netip.ParseAddr(s); err == nil {
				addrs = append(addrs, a)
			}
		}
		if _, _, err := endpointAddrs(addrs); err != nil {
			errs = append(errs, fmt.Errorf("%s.ips: %w", p, err))
		}
	}
	pnames := map[string]bool{}
	for j, cp := range ep.Ports {
		pp := fmt.Sprintf("%s.ports[%d]", p, j)
		if !validPortName(cp.Name) {
			errs = append(errs, fmt.Errorf("%s.name %q: want at most 15 lower-case letters, digits and '-', with a letter", pp, cp.Name))
		} else if pnames[cp.Name] {
			errs = append(errs, fmt.Errorf("%s.name %q is used twice", pp, cp.Name))
		}
		pnames[cp.Name] = true
		if cp.Port == 0 {
			errs = append(errs, fmt.Errorf("%s.port is required", pp))
		}
		if _, err := cp.namedPort(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", pp, err))
		}
	}
	return errs
}

// wirePolicies decodes the wire-form policies (validated already).
func (c *Config) wirePolicies() ([]*npds.NetworkPolicy, []*npds.NetworkPolicyHosts, error) {
	var ps []*npds.NetworkPolicy
	var hs []*npds.NetworkPolicyHosts
	for i, raw := range c.Policies {
		p := &npds.NetworkPolicy{}
		if err := protojson.Unmarshal(raw, p); err != nil {
			return nil, nil, fmt.Errorf("policies[%d]: %w", i, err)
		}
		ps = append(ps, p)
	}
	for i, raw := range c.Hosts {
		h := &npds.NetworkPolicyHosts{}
		if err := protojson.Unmarshal(raw, h); err != nil {
			return nil, nil, fmt.Errorf("hosts[%d]: %w", i, err)
		}
		hs = append(hs, h)
	}
	return ps, hs, nil
}

// labelFilter builds the identity-relevant label filter of labels and
// labelPrefixFile.
func (c *Config) labelFilter() (*policy.LabelFilter, error) {
	var file []byte
	if c.LabelPrefixFile != "" {
		b, err := os.ReadFile(c.LabelPrefixFile)
		if err != nil {
			return nil, fmt.Errorf("labelPrefixFile: %w", err)
		}
		file = b
	}
	f, err := policy.NewLabelFilter(c.Labels, file)
	if err != nil {
		if c.LabelPrefixFile != "" && len(file) > 0 && !strings.HasPrefix(err.Error(), "labels[") {
			return nil, fmt.Errorf("labelPrefixFile %s: %w", c.LabelPrefixFile, err)
		}
		return nil, err
	}
	return f, nil
}

// clusterName is ClusterName or Cilium's default, "default".
func (c *Config) clusterName() string {
	if c.ClusterName == "" {
		return "default"
	}
	return c.ClusterName
}

// validLabelValue: a Kubernetes label value (RFC 1123-ish: up to 63
// characters of alphanumerics, '-', '_' and '.', alphanumeric at both ends).
func validLabelValue(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	alnum := func(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }
	for i := 0; i < len(s); i++ {
		if c := s[i]; !alnum(c) && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return alnum(s[0]) && alnum(s[len(s)-1])
}

// features are the options gated policy constructs need.
func (c *Config) features() policy.Features {
	return policy.Features{NodeSelectorLabels: c.EnableNodeSelectorLabels, ExtendedIPProtocols: c.EnableExtendedIPProtocols}
}

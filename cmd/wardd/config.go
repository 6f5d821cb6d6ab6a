package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

// nodeConfig is wardd's embedded-mode configuration (no Kubernetes): the
// proxy listeners of this node and, until the policy directory is wired,
// resolved policies in their wire form.
type nodeConfig struct {
	Node      string           `json:"node"`
	Listeners []listenerConfig `json:"listeners"`
	// PolicyDir holds CiliumNetworkPolicy files (watched); relative to the
	// config file. With it, Endpoints are the local workloads.
	PolicyDir string           `json:"policyDir"`
	Mode      string           `json:"mode"` // enforcement: default, always, never
	Endpoints []endpointConfig `json:"endpoints"`
	Datapath  datapathConfig   `json:"datapath"`
	// Policies and Hosts are resolved policies in their wire form, for
	// setups without a policy directory.
	Policies []json.RawMessage `json:"policies"` // npds.NetworkPolicy (protojson)
	Hosts    []json.RawMessage `json:"hosts"`    // npds.NetworkPolicyHosts (protojson)
}

type listenerConfig struct {
	Name     string `json:"name"`
	Kind     string `json:"kind"` // "http" or "tcp"
	Address  string `json:"address"`
	Port     uint32 `json:"port"`
	Upstream string `json:"upstream"` // "ip:port"; empty with transparent
	// Transparent listeners accept redirected traffic for any destination.
	Transparent bool     `json:"transparent,omitempty"`
	Filters     []string `json:"filters,omitempty"` // ward filters; default per kind
	Endpoint    string   `json:"endpoint,omitempty"`
	Direction   string   `json:"direction,omitempty"`
	PolicyPort  uint16   `json:"policyPort,omitempty"`
	AccessLog   string   `json:"accessLog,omitempty"`
	HTTP2       bool     `json:"http2Upstream,omitempty"`
}

func loadNodeConfig(path string) (*nodeConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	js, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	var c nodeConfig
	dec := json.NewDecoder(bytesReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if c.PolicyDir != "" && !filepath.IsAbs(c.PolicyDir) {
		c.PolicyDir = filepath.Join(filepath.Dir(path), c.PolicyDir)
	}
	return &c, c.validate()
}

func (c *nodeConfig) validate() error {
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
	if c.Datapath.Enabled && c.PolicyDir == "" {
		errs = append(errs, errors.New("datapath.enabled needs policyDir (the datapath enforces resolved policy)"))
	}
	return errors.Join(errs...)
}

// policies decodes the wire-form policies.
func (c *nodeConfig) policies() ([]*npds.NetworkPolicy, []*npds.NetworkPolicyHosts, error) {
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

// envoyResources builds the listeners and clusters of the config.
func (c *nodeConfig) envoyResources(socket, node string) (xds.EnvoyResources, error) {
	var r xds.EnvoyResources
	for _, l := range c.Listeners {
		cluster := l.Name + "-upstream"
		if l.Transparent {
			r.Clusters = append(r.Clusters, xds.OriginalDstCluster(cluster, l.HTTP2))
		} else {
			ap := netip.MustParseAddrPort(l.Upstream)
			r.Clusters = append(r.Clusters, xds.StaticCluster(cluster, ap.Addr().String(), uint32(ap.Port()), l.HTTP2))
		}
		filters := l.Filters
		if filters == nil {
			if l.Kind == "http" {
				filters = []string{"ward.http"}
			} else {
				filters = []string{}
			}
		}
		fcfg, _ := json.Marshal(map[string]any{
			"xds_socket": socket, "node": node, "endpoint": l.Endpoint,
			"direction": l.Direction, "port": l.PolicyPort, "access_log": l.AccessLog,
		})
		var mf []xds.ModuleFilter
		for _, f := range filters {
			mf = append(mf, xds.ModuleFilter{Name: f, Config: fcfg})
		}
		if l.Kind == "http" {
			lis, err := xds.HTTPListener{Name: l.Name, Address: l.Address, Port: l.Port, Transparent: l.Transparent, Cluster: cluster, Filters: mf}.Build()
			if err != nil {
				return r, err
			}
			r.Listeners = append(r.Listeners, lis)
		} else {
			lis, err := xds.TCPListener{Name: l.Name, Address: l.Address, Port: l.Port, Transparent: l.Transparent, Cluster: cluster, Filters: mf}.Build()
			if err != nil {
				return r, err
			}
			r.Listeners = append(r.Listeners, lis)
		}
	}
	return r, nil
}

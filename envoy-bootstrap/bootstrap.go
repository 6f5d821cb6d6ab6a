// Package bootstrap writes the bootstrap configuration Envoy starts with:
// the node identity, an admin interface on loopback only, and one xDS
// cluster over wardd's unix socket that carries everything else (ADS for
// listeners, clusters and secrets). The dynamic-module search path is not
// part of the bootstrap: Envoy reads it from the environment variable
// ENVOY_DYNAMIC_MODULES_SEARCH_PATH, which wardd sets (see Env).
package bootstrap

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// XDSCluster is the name of the bootstrap cluster that reaches wardd.
const XDSCluster = "ward-xds"

// Config describes the bootstrap. NodeID and XDSSocket are required.
type Config struct {
	NodeID    string // Envoy's node id; wardd serves resources for it
	Cluster   string // node cluster name; defaults to "ward"
	XDSSocket string // wardd's unix socket
	// AdminAddress is the admin listener: an absolute unix socket path
	// (created mode 0600; the default of wardd, in its 0750 state
	// directory) or "127.0.0.1:PORT". A TCP address must be loopback, and
	// even then every local process can reach it: the admin interface can
	// stop Envoy and turn on logging of headers.
	AdminAddress string
	// ModuleDir holds libward.so.
	ModuleDir string
}

// Validate checks the configuration.
func (c Config) Validate() error {
	var errs []error
	if c.NodeID == "" {
		errs = append(errs, errors.New("bootstrap: NodeID is required"))
	}
	if c.XDSSocket == "" {
		errs = append(errs, errors.New("bootstrap: XDSSocket is required"))
	}
	if filepath.IsAbs(c.AdminAddress) {
		return errors.Join(errs...)
	}
	ap, err := netip.ParseAddrPort(c.AdminAddress)
	if err != nil {
		errs = append(errs, fmt.Errorf("bootstrap: AdminAddress %q: %w", c.AdminAddress, err))
	} else if !ap.Addr().IsLoopback() {
		errs = append(errs, fmt.Errorf("bootstrap: AdminAddress %q must be a loopback address", c.AdminAddress))
	}
	return errors.Join(errs...)
}

// Build returns the bootstrap message.
func (c Config) Build() (*bootstrapv3.Bootstrap, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	admin := &core.Address{Address: &core.Address_Pipe{Pipe: &core.Pipe{Path: c.AdminAddress, Mode: 0o600}}}
	if !filepath.IsAbs(c.AdminAddress) {
		ap := netip.MustParseAddrPort(c.AdminAddress)
		admin = &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
			Address: ap.Addr().String(), PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(ap.Port())},
		}}}
	}
	clusterName := c.Cluster
	if clusterName == "" {
		clusterName = "ward"
	}
	h2, err := anypb.New(&upstreamhttp.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &core.Http2ProtocolOptions{},
				},
			},
		},
	})
	if err != nil {
		return nil, err
	}
	xdsSource := &core.ConfigSource{
		ResourceApiVersion:    core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	}
	return &bootstrapv3.Bootstrap{
		Node:  &core.Node{Id: c.NodeID, Cluster: clusterName},
		Admin: &bootstrapv3.Admin{Address: admin},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &core.ApiConfigSource{
				ApiType:             core.ApiConfigSource_GRPC,
				TransportApiVersion: core.ApiVersion_V3,
				GrpcServices: []*core.GrpcService{{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: XDSCluster},
				}}},
				SetNodeOnFirstMessageOnly: true,
			},
			LdsConfig: xdsSource,
			CdsConfig: xdsSource,
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: []*cluster.Cluster{{
			Name:                 XDSCluster,
			ConnectTimeout:       durationpb.New(time.Second),
			ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
			TypedExtensionProtocolOptions: map[string]*anypb.Any{
				"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2,
			},
			LoadAssignment: &endpoint.ClusterLoadAssignment{
				ClusterName: XDSCluster,
				Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
					HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: &core.Address{
						Address: &core.Address_Pipe{Pipe: &core.Pipe{Path: c.XDSSocket}},
					}}},
				}}}},
			},
		}}},
	}, nil
}

// Write builds the bootstrap and writes it as JSON to path (mode 0600).
func (c Config) Write(path string) error {
	b, err := c.Build()
	if err != nil {
		return err
	}
	data, err := protojson.MarshalOptions{Multiline: true}.Marshal(b)
	if err != nil {
		return fmt.Errorf("bootstrap: marshal: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("bootstrap: write %s: %w", path, err)
	}
	return nil
}

// Env returns the environment entries Envoy needs besides the bootstrap.
func (c Config) Env() []string {
	return []string{"ENVOY_DYNAMIC_MODULES_SEARCH_PATH=" + c.ModuleDir}
}

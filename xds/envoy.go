package xds

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	dmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/dynamic_modules/v3"
	dmhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/dynamic_modules/v3"
	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	origdst "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	origsrc "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	dmnet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/dynamic_modules/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// ModuleName is the dynamic module every ward filter lives in (libward.so).
const ModuleName = "ward"

// ModuleFilter names one filter of libward.so and its configuration (JSON,
// delivered to the filter as raw bytes through a StringValue).
type ModuleFilter struct {
	Name   string
	Config []byte
}

// HTTPListener describes an HTTP proxy listener.
type HTTPListener struct {
	Name    string
	Address string
	Port    uint32
	// Transparent makes the listener accept redirected connections for any
	// destination (IP_TRANSPARENT + original_dst); the upstream is then the
	// original destination (Cluster must be an ORIGINAL_DST cluster).
	Transparent bool
	Cluster     string
	// Filters are ward filters placed before the router, in order.
	Filters []ModuleFilter
	// RBAC, when set, is placed before the ward filters (benchmarks compare
	// ward with Envoy's native RBAC).
	RBAC *rbachttp.RBAC
	// ExtAuthzCluster, when set, puts Envoy's ext_authz filter (gRPC, to
	// that cluster) before the ward filters (benchmarks compare ward with
	// an external authorization service).
	ExtAuthzCluster string
	// StatPrefix defaults to Name.
	StatPrefix string
}

// TCPListener describes a TCP proxy listener with ward network filters in
// front of tcp_proxy.
type TCPListener struct {
	Name        string
	Address     string
	Port        uint32
	Transparent bool
	Cluster     string
	Filters     []ModuleFilter
}

func moduleConfig() *dmv3.DynamicModuleConfig {
	// do_not_close: a Go runtime cannot be unloaded (golang/go#11100).
	return &dmv3.DynamicModuleConfig{Name: ModuleName, DoNotClose: true}
}

func anyOf(m proto.Message) (*anypb.Any, error) { return anypb.New(m) }

// ipv6Enabled reports whether the kernel has IPv6 (not booted with
// ipv6.disable=1): binding the [::] twin of a listener would fail there,
// and Envoy would reject the whole listener.
var ipv6Enabled = sync.OnceValue(func() bool {
	_, err := os.Stat("/proc/net/if_inet6")
	return err == nil
})

func socketAddress(addr string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: addr, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
	}}}
}

func listenerBase(name, addr string, port uint32, transparent bool) *listener.Listener {
	l := &listener.Listener{Name: name, Address: socketAddress(addr, port)}
	if transparent {
		l.Transparent = wrapperspb.Bool(true)
		if addr == "0.0.0.0" && ipv6Enabled() {
			// Dual stack: the datapath assigns IPv6 flows to a socket
			// found by an IPv6 lookup, so the wildcard listener has a
			// [::] twin (IPV6_V6ONLY, Envoy's default without
			// ipv4_compat: IPv4 flows keep their AF_INET socket and
			// addresses, never v4-mapped ones).
			l.AdditionalAddresses = []*listener.AdditionalAddress{{Address: socketAddress("::", port)}}
		}
		od, _ := anypb.New(&origdst.OriginalDst{})
		l.ListenerFilters = []*listener.ListenerFilter{{
			Name:       "envoy.filters.listener.original_dst",
			ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: od},
		}}
	}
	return l
}

// OriginalSource makes l's upstream connections leave from the client's
// own address (Envoy's original_src listener filter: IP_TRANSPARENT and a
// bind to the downstream's source address, any port), as Cilium's egress
// proxy does: the destination, on this node or another, sees the client's
// address and so its identity, not the node's. The replies come back
// addressed to the client; the proxy routing delivers them to the proxy's
// socket (bpf/redirect nft.go). The upstream's mark stays the cluster's.
func OriginalSource(l *listener.Listener) {
	a, _ := anypb.New(&origsrc.OriginalSrc{})
	l.ListenerFilters = append(l.ListenerFilters, &listener.ListenerFilter{
		Name:       "envoy.filters.listener.original_src",
		ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: a},
	})
}

// Build returns the Envoy listener.
func (h HTTPListener) Build() (*listener.Listener, error) {
	if h.Name == "" || h.Cluster == "" {
		return nil, errors.New("xds: HTTPListener needs Name and Cluster")
	}
	var filters []*hcm.HttpFilter
	if h.RBAC != nil {
		a, err := anyOf(h.RBAC)
		if err != nil {
			return nil, err
		}
		filters = append(filters, &hcm.HttpFilter{Name: "envoy.filters.http.rbac", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: a}})
	}
	if h.ExtAuthzCluster != "" {
		a, err := anyOf(&extauthz.ExtAuthz{
			TransportApiVersion: core.ApiVersion_V3,
			Services: &extauthz.ExtAuthz_GrpcService{GrpcService: &core.GrpcService{
				TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: h.ExtAuthzCluster}},
				Timeout:         durationpb.New(5 * time.Second),
			}},
		})
		if err != nil {
			return nil, err
		}
		filters = append(filters, &hcm.HttpFilter{Name: "envoy.filters.http.ext_authz", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: a}})
	}
	prefix := h.StatPrefix
	if prefix == "" {
		prefix = h.Name
	}
	f, err := httpConnectionManager(h.Name, prefix, h.Cluster, filters, h.Filters)
	if err != nil {
		return nil, err
	}
	l := listenerBase(h.Name, h.Address, h.Port, h.Transparent)
	l.FilterChains = []*listener.FilterChain{{Filters: []*listener.Filter{f}}}
	return l, nil
}

// httpConnectionManager is the HCM of every listener ward builds: the
// filters before ward's (pre), ward's module filters, the router to one
// cluster, and path normalization, so rules see the path the upstream
// will see.
func httpConnectionManager(name, prefix, cluster string, pre []*hcm.HttpFilter, ward []ModuleFilter) (*listener.Filter, error) {
	filters := pre
	for i, f := range ward {
		cfg, err := anyOf(wrapperspb.String(string(f.Config)))
		if err != nil {
			return nil, err
		}
		a, err := anyOf(&dmhttp.DynamicModuleFilter{DynamicModuleConfig: moduleConfig(), FilterName: f.Name, FilterConfig: cfg})
		if err != nil {
			return nil, err
		}
		filters = append(filters, &hcm.HttpFilter{Name: fmt.Sprintf("%s.%d", f.Name, i), ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: a}})
	}
	router, err := anyOf(&routerv3.Router{})
	if err != nil {
		return nil, err
	}
	filters = append(filters, &hcm.HttpFilter{Name: "envoy.filters.http.router", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: router}})
	a, err := anyOf(&hcm.HttpConnectionManager{
		StatPrefix: prefix,
		CodecType:  hcm.HttpConnectionManager_AUTO, // HTTP/1.1 and h2 (h2c, or ALPN under TLS)
		RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{
			Name: name,
			VirtualHosts: []*route.VirtualHost{{
				Name:    name,
				Domains: []string{"*"},
				Routes: []*route.Route{{
					Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
					Action: &route.Route_Route{Route: &route.RouteAction{
						ClusterSpecifier: &route.RouteAction_Cluster{Cluster: cluster},
						Timeout:          durationpb.New(0), // streaming gRPC
					}},
				}},
			}},
		}},
		HttpFilters: filters,
		// RFC 3986 normalized (no /../ escapes), merged slashes, escaped
		// slashes decoded.
		NormalizePath:                wrapperspb.Bool(true),
		MergeSlashes:                 true,
		PathWithEscapedSlashesAction: hcm.HttpConnectionManager_UNESCAPE_AND_FORWARD,
	})
	if err != nil {
		return nil, err
	}
	return &listener.Filter{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listener.Filter_TypedConfig{TypedConfig: a}}, nil
}

// Build returns the Envoy listener.
func (t TCPListener) Build() (*listener.Listener, error) {
	if t.Name == "" || t.Cluster == "" {
		return nil, errors.New("xds: TCPListener needs Name and Cluster")
	}
	var filters []*listener.Filter
	for i, f := range t.Filters {
		cfg, err := anyOf(wrapperspb.String(string(f.Config)))
		if err != nil {
			return nil, err
		}
		a, err := anyOf(&dmnet.DynamicModuleNetworkFilter{
			DynamicModuleConfig: moduleConfig(),
			FilterName:          f.Name,
			FilterConfig:        cfg,
		})
		if err != nil {
			return nil, err
		}
		filters = append(filters, &listener.Filter{Name: fmt.Sprintf("%s.%d", f.Name, i), ConfigType: &listener.Filter_TypedConfig{TypedConfig: a}})
	}
	tp, err := anyOf(&tcpproxy.TcpProxy{
		StatPrefix:       t.Name,
		ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: t.Cluster},
	})
	if err != nil {
		return nil, err
	}
	filters = append(filters, &listener.Filter{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listener.Filter_TypedConfig{TypedConfig: tp}})
	l := listenerBase(t.Name, t.Address, t.Port, t.Transparent)
	l.FilterChains = []*listener.FilterChain{{Filters: filters}}
	return l, nil
}

// StaticCluster is a cluster of one fixed upstream address. HTTP2 enables
// h2 (prior knowledge) toward it, for gRPC upstreams.
func StaticCluster(name, addr string, port uint32, http2 bool) *cluster.Cluster {
	c := &cluster.Cluster{
		Name:                 name,
		ConnectTimeout:       durationpb.New(5 * time.Second),
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		LoadAssignment: &endpoint.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
				HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: socketAddress(addr, port)}},
			}}}},
		},
	}
	if http2 {
		setHTTP2(c)
	}
	return c
}

// OriginalDstCluster forwards to each connection's original destination
// (transparent listeners).
func OriginalDstCluster(name string, http2 bool) *cluster.Cluster {
	c := &cluster.Cluster{
		Name:                 name,
		ConnectTimeout:       durationpb.New(5 * time.Second),
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST},
		LbPolicy:             cluster.Cluster_CLUSTER_PROVIDED,
	}
	if http2 {
		setHTTP2(c)
	}
	return c
}

func setHTTP2(c *cluster.Cluster) {
	setHTTPProtocolOptions(c, &upstreamhttp.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &core.Http2ProtocolOptions{},
				},
			},
		},
	})
}

// httpProtocolOptionsName is the key of the upstream HTTP options in a
// cluster's typed_extension_protocol_options.
const httpProtocolOptionsName = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

func setHTTPProtocolOptions(c *cluster.Cluster, o *upstreamhttp.HttpProtocolOptions) {
	opts, err := anypb.New(o)
	if err != nil {
		panic(err) // a well-formed message always marshals
	}
	if c.TypedExtensionProtocolOptions == nil {
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{}
	}
	c.TypedExtensionProtocolOptions[httpProtocolOptionsName] = opts
}

// FollowDownstream makes the cluster speak upstream the HTTP version the
// client spoke downstream: HTTP/1.1 as HTTP/1.1, h2 (h2c prior knowledge,
// or ALPN h2 under TLS) as h2 (Envoy's HttpProtocolOptions
// use_downstream_protocol_config). A transparent listener's upstream is the
// server the client addressed, so it speaks what the client chose: gRPC and
// h2c need h2 to it, and an HTTP/1.1-only server never gets h2. It
// replaces any other upstream HTTP protocol choice of c.
func FollowDownstream(c *cluster.Cluster) *cluster.Cluster {
	setHTTPProtocolOptions(c, &upstreamhttp.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_UseDownstreamProtocolConfig{
			UseDownstreamProtocolConfig: &upstreamhttp.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions:  &core.Http1ProtocolOptions{},
				Http2ProtocolOptions: &core.Http2ProtocolOptions{},
			},
		},
	})
	return c
}

// MarkUpstream sets SO_MARK on every upstream socket of the cluster (the
// datapath reads it: an ingress proxy's upstream connection carries
// redirect.MarkProxyIngress, an egress proxy's the source identity).
func MarkUpstream(c *cluster.Cluster, mark uint32) *cluster.Cluster {
	c.UpstreamBindConfig = &core.BindConfig{SocketOptions: []*core.SocketOption{{
		Description: "ward datapath mark",
		Level:       1,  // SOL_SOCKET
		Name:        36, // SO_MARK
		Value:       &core.SocketOption_IntValue{IntValue: int64(mark)},
		State:       core.SocketOption_STATE_PREBIND,
	}}}
	return c
}

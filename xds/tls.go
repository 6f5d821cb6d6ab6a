package xds

// TLS listeners and clusters: serverNames (SNI) policy on a passthrough
// listener, and TLS interception (terminatingTLS / originatingTLS) with
// certificates and trust bundles that Envoy fetches by name over SDS.
//
// Secrets never appear inline in a listener or cluster: a listener or
// cluster names them (SdsSecretConfig with an ADS config source) and the
// snapshot's Secrets carry them once, however many filter chains, listeners
// or clusters reference the same name. Rotating a secret is a new Secret
// with the same name: Envoy swaps the TLS context for new handshakes without
// touching the listener, so established connections are not drained.

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	xdscore "github.com/cncf/xds/go/xds/core/v3"
	matcherxds "github.com/cncf/xds/go/xds/type/matcher/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	sfscommon "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/set_filter_state/v3"
	sfshttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/set_filter_state/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	netinput "github.com/envoyproxy/go-control-plane/envoy/extensions/matching/common_inputs/network/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/wardproxy/ward/policy/matchpattern"
)

// Well-known filter state keys (Envoy "Well Known Filter State Objects"):
// the router builds the upstream transport socket options from them, so the
// upstream SNI and the SAN the upstream certificate must carry are the SNI
// of the client's ClientHello.
const (
	filterStateUpstreamSNI = "envoy.network.upstream_server_name"
	filterStateUpstreamSAN = "envoy.network.upstream_subject_alt_names"
)

// SNIListener is a serverNames (SNI) policy listener: the TLS inspector reads
// the ClientHello and a connection whose SNI one of the Routes allows is
// forwarded untouched (tcp_proxy, no termination) to that route's cluster.
// Every other connection — another SNI, a ClientHello without SNI, or not TLS
// at all — matches no filter chain and Envoy closes it, so the client's
// handshake fails.
type SNIListener struct {
	Name        string
	Address     string
	Port        uint32
	Transparent bool
	Routes      []SNIRoute
	// StatPrefix defaults to Name.
	StatPrefix string
}

// SNIRoute allows a set of server names to one cluster.
type SNIRoute struct {
	// ServerNames are policy serverNames in the matchPattern language
	// (package policy/matchpattern, Cilium's semantics): exact names
	// ("one.one.one.one"), '*' within one label ("*.cilium.io" matches
	// "docs.cilium.io", not "a.b.cilium.io"), a leading "**." for any depth,
	// "*" alone for every name. Case-insensitive, trailing dot optional. A
	// pattern may appear in one route only; when patterns of two routes
	// overlap, the first route wins.
	ServerNames []string
	Cluster     string
}

// Build returns the Envoy listener.
func (s SNIListener) Build() (*listener.Listener, error) {
	if s.Name == "" {
		return nil, errors.New("xds: SNIListener needs a Name")
	}
	if len(s.Routes) == 0 {
		return nil, fmt.Errorf("xds: SNIListener %s: no routes (nothing would be allowed; do not build a listener)", s.Name)
	}
	var err error
	prefix := s.StatPrefix
	if prefix == "" {
		prefix = s.Name
	}
	seen := map[string]bool{}
	l := listenerBase(s.Name, s.Address, s.Port, s.Transparent)
	if err := addTLSInspector(l); err != nil {
		return nil, err
	}
	var sel []chainSelector
	for i, r := range s.Routes {
		if r.Cluster == "" {
			return nil, fmt.Errorf("xds: SNIListener %s: routes[%d]: no Cluster", s.Name, i)
		}
		if len(r.ServerNames) == 0 {
			// Say "*" to allow every SNI: an empty list is more likely a
			// lost policy than a wish to allow everything.
			return nil, fmt.Errorf("xds: SNIListener %s: routes[%d]: no ServerNames", s.Name, i)
		}
		res, err := serverNameRegexes(r.ServerNames, seen)
		if err != nil {
			return nil, fmt.Errorf("xds: SNIListener %s: routes[%d]: %w", s.Name, i, err)
		}
		tp, err := anyOf(&tcpproxy.TcpProxy{
			StatPrefix:       prefix,
			ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: r.Cluster},
		})
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("%s/%d", s.Name, i)
		sel = append(sel, chainSelector{chain: name, regexes: res})
		l.FilterChains = append(l.FilterChains, &listener.FilterChain{
			Name: name,
			Filters: []*listener.Filter{{
				Name:       "envoy.filters.network.tcp_proxy",
				ConfigType: &listener.Filter_TypedConfig{TypedConfig: tp},
			}},
		})
	}
	if l.FilterChainMatcher, err = chainMatcher(sel); err != nil {
		return nil, err
	}
	return l, nil
}

// InterceptListener terminates TLS (terminatingTLS): the TLS inspector reads
// the ClientHello's SNI, the matching chain completes the handshake with its
// Certificate (an SDS secret name), HTTP rules (ward.http) apply to the
// decrypted requests, and the router sends allowed requests to the chain's
// Cluster, which originates a new TLS connection (OriginatingCluster).
//
// The upstream connection carries the client's SNI and the upstream
// certificate must name it (SAN), whatever the request's Host header says.
type InterceptListener struct {
	Name        string
	Address     string
	Port        uint32
	Transparent bool
	Chains      []InterceptChain
	// StatPrefix defaults to Name.
	StatPrefix string
}

// InterceptChain is one certificate and its HTTP policy on an
// InterceptListener.
type InterceptChain struct {
	// ServerNames select the chain by SNI (matchPattern language, as
	// SNIRoute.ServerNames). At most one chain of a listener may leave it
	// empty: it then takes every ClientHello with an SNI no other chain
	// names. A ClientHello without SNI matches no chain and is refused: there
	// would be no name to verify the upstream against.
	ServerNames []string
	// Certificate is the SDS name of the tls_certificate secret presented to
	// the client.
	Certificate string
	// Cluster is the upstream (an OriginatingCluster).
	Cluster string
	// Filters are ward HTTP filters placed before the router, in order.
	Filters []ModuleFilter
	// ALPN offered to clients; default h2 and http/1.1.
	ALPN []string
}

// Build returns the Envoy listener.
func (x InterceptListener) Build() (*listener.Listener, error) {
	if x.Name == "" {
		return nil, errors.New("xds: InterceptListener needs a Name")
	}
	if len(x.Chains) == 0 {
		return nil, fmt.Errorf("xds: InterceptListener %s: no chains", x.Name)
	}
	prefix := x.StatPrefix
	if prefix == "" {
		prefix = x.Name
	}
	l := listenerBase(x.Name, x.Address, x.Port, x.Transparent)
	if err := addTLSInspector(l); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	catchAll := ""
	var sel []chainSelector
	for i, c := range x.Chains {
		where := fmt.Sprintf("xds: InterceptListener %s: chains[%d]", x.Name, i)
		if c.Certificate == "" || c.Cluster == "" {
			return nil, fmt.Errorf("%s: needs Certificate and Cluster", where)
		}
		name := fmt.Sprintf("%s/%d", x.Name, i)
		if len(c.ServerNames) == 0 {
			if catchAll != "" {
				return nil, fmt.Errorf("%s: a second chain without ServerNames", where)
			}
			catchAll = name
		} else {
			res, err := serverNameRegexes(c.ServerNames, seen)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
			sel = append(sel, chainSelector{chain: name, regexes: res})
		}
		alpn := c.ALPN
		if len(alpn) == 0 {
			alpn = []string{"h2", "http/1.1"}
		}
		ts, err := transportSocket(&tlsv3.DownstreamTlsContext{
			CommonTlsContext: &tlsv3.CommonTlsContext{
				TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{SDSRef(c.Certificate)},
				AlpnProtocols:                  alpn,
			},
		})
		if err != nil {
			return nil, err
		}
		m, err := interceptHCM(name, prefix, c)
		if err != nil {
			return nil, err
		}
		l.FilterChains = append(l.FilterChains, &listener.FilterChain{
			Name:            name,
			TransportSocket: ts,
			Filters:         []*listener.Filter{m},
		})
	}
	if catchAll != "" {
		// Last: named chains win; a ClientHello without SNI matches nothing.
		sel = append(sel, chainSelector{chain: catchAll, regexes: []string{".+"}})
	}
	var err error
	if l.FilterChainMatcher, err = chainMatcher(sel); err != nil {
		return nil, err
	}
	return l, nil
}

// Prune drops the chains whose Certificate, or whose cluster's trust
// bundle (trust maps a cluster name to its OriginatingCluster.TrustedCA),
// is not a published secret, and returns one error per dropped chain naming
// the secret. A listener must not reference a secret the snapshot lacks:
// Envoy would hold the listener warming waiting for it (and the
// go-control-plane snapshot cache answers an ADS request only when it has
// every name asked for), so one bad secret would stall every rule. Pruned,
// the bad rule fails closed — its SNIs match no chain and are refused — and
// the other chains keep working.
func (x InterceptListener) Prune(published func(name string) bool, trust map[string]string) (InterceptListener, error) {
	var errs []error
	kept := make([]InterceptChain, 0, len(x.Chains))
	for _, c := range x.Chains {
		sni := strings.Join(c.ServerNames, ",")
		if sni == "" {
			sni = "*"
		}
		switch ca, ok := trust[c.Cluster]; {
		case !published(c.Certificate):
			errs = append(errs, fmt.Errorf("xds: listener %s: server names %s: terminating secret %s unavailable; chain left out", x.Name, sni, c.Certificate))
		case ok && !published(ca):
			errs = append(errs, fmt.Errorf("xds: listener %s: server names %s: originating secret %s unavailable; chain left out", x.Name, sni, ca))
		default:
			kept = append(kept, c)
		}
	}
	x.Chains = kept
	return x, errors.Join(errs...)
}

// interceptHCM is the HTTP connection manager of one interception chain:
// set the upstream SNI/SAN from the ClientHello, the ward filters, the
// router.
func interceptHCM(name, prefix string, c InterceptChain) (*listener.Filter, error) {
	sni := func(key string) *sfscommon.FilterStateValue {
		return &sfscommon.FilterStateValue{
			Key: &sfscommon.FilterStateValue_ObjectKey{ObjectKey: key},
			Value: &sfscommon.FilterStateValue_FormatString{FormatString: &core.SubstitutionFormatString{
				Format: &core.SubstitutionFormatString_TextFormatSource{TextFormatSource: &core.DataSource{
					Specifier: &core.DataSource_InlineString{InlineString: "%REQUESTED_SERVER_NAME%"},
				}},
			}},
		}
	}
	sfs, err := anyOf(&sfshttp.Config{OnRequestHeaders: []*sfscommon.FilterStateValue{sni(filterStateUpstreamSNI), sni(filterStateUpstreamSAN)}})
	if err != nil {
		return nil, err
	}
	pre := []*hcm.HttpFilter{{Name: "envoy.filters.http.set_filter_state", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: sfs}}}
	return httpConnectionManager(name, prefix, c.Cluster, pre, c.Filters)
}

// OriginatingCluster is the upstream of an interception (originatingTLS): a
// TLS connection whose server certificate is verified against TrustedCA.
// The SNI and the SAN the certificate must carry come from the intercepted
// ClientHello (InterceptListener); SNI and SubjectAltNames here are for
// clusters used without an InterceptListener in front.
type OriginatingCluster struct {
	Name string
	// Address and Port name a fixed upstream; an empty Address makes an
	// ORIGINAL_DST cluster (transparent listeners).
	Address string
	Port    uint32
	// TrustedCA is the SDS name of the validation_context secret; required:
	// an interception never originates an unverified connection.
	TrustedCA string
	// Certificate is the SDS name of a client certificate, if the upstream
	// asks for one (originatingTLS with tls.crt/tls.key).
	Certificate string
	// SNI and SubjectAltNames are fixed values (see above).
	SNI             string
	SubjectAltNames []string
	// AutoSNI takes the upstream SNI from each request's Host header and
	// requires the upstream certificate to name it: for plaintext
	// requests (originatingTLS without terminatingTLS), which carry no
	// ClientHello to take it from.
	AutoSNI bool
	// HTTP2 speaks h2 (ALPN h2) to the upstream; ALPN offers h2 and
	// http/1.1 and speaks what the upstream picks (gRPC reaches a gRPC
	// server as h2, any client reaches an HTTP/1.1-only server); default
	// HTTP/1.1.
	HTTP2 bool
	ALPN  bool
}

// Build returns the Envoy cluster.
func (o OriginatingCluster) Build() (*cluster.Cluster, error) {
	if o.Name == "" || o.TrustedCA == "" {
		return nil, errors.New("xds: OriginatingCluster needs Name and TrustedCA")
	}
	var c *cluster.Cluster
	if o.Address == "" {
		c = OriginalDstCluster(o.Name, false)
	} else {
		c = StaticCluster(o.Name, o.Address, o.Port, false)
	}
	common := &tlsv3.CommonTlsContext{
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{ValidationContextSdsSecretConfig: SDSRef(o.TrustedCA)},
	}
	if len(o.SubjectAltNames) > 0 {
		var ms []*tlsv3.SubjectAltNameMatcher
		for _, n := range o.SubjectAltNames {
			ms = append(ms, &tlsv3.SubjectAltNameMatcher{
				SanType: tlsv3.SubjectAltNameMatcher_DNS,
				Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: n}},
			})
		}
		// A combined context: the SAN matchers are ours, the trust bundle
		// comes from SDS.
		common.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: ms},
			ValidationContextSdsSecretConfig: SDSRef(o.TrustedCA),
		}}
	}
	if o.Certificate != "" {
		common.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{SDSRef(o.Certificate)}
	}
	// The connection pool is keyed by SNI/SAN (transport socket options),
	// so upstreams of different names never share a connection.
	opts := &upstreamhttp.HttpProtocolOptions{}
	if o.AutoSNI {
		opts.UpstreamHttpProtocolOptions = &core.UpstreamHttpProtocolOptions{AutoSni: true, AutoSanValidation: true}
	}
	switch {
	case o.HTTP2:
		common.AlpnProtocols = []string{"h2"}
		opts.UpstreamProtocolOptions = &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}},
		}}
	case o.ALPN:
		common.AlpnProtocols = []string{"h2", "http/1.1"}
		opts.UpstreamProtocolOptions = &upstreamhttp.HttpProtocolOptions_AutoConfig{AutoConfig: &upstreamhttp.HttpProtocolOptions_AutoHttpConfig{
			HttpProtocolOptions: &core.Http1ProtocolOptions{}, Http2ProtocolOptions: &core.Http2ProtocolOptions{},
		}}
	default:
		common.AlpnProtocols = []string{"http/1.1"}
		opts.UpstreamProtocolOptions = &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &core.Http1ProtocolOptions{}},
		}}
	}
	ts, err := transportSocket(&tlsv3.UpstreamTlsContext{CommonTlsContext: common, Sni: o.SNI})
	if err != nil {
		return nil, err
	}
	c.TransportSocket = ts
	a, err := anyOf(opts)
	if err != nil {
		return nil, err
	}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": a}
	return c, nil
}

// PassthroughCluster is a plain TCP cluster to a fixed upstream, for
// SNIListener routes (no TLS of its own: the bytes pass untouched).
func PassthroughCluster(name, addr string, port uint32) *cluster.Cluster {
	return &cluster.Cluster{
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
}

// SDSRef references a secret by name, fetched over the ADS stream.
func SDSRef(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &core.ConfigSource{
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
		ResourceApiVersion:    core.ApiVersion_V3,
	}}
}

// CertificateSecret is an SDS tls_certificate secret (PEM chain and key).
func CertificateSecret(name string, certPEM, keyPEM []byte) *tlsv3.Secret {
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: certPEM}},
		PrivateKey:       &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: keyPEM}},
	}}}
}

// ValidationSecret is an SDS validation_context secret: the PEM bundle of
// CAs an upstream certificate must chain to.
func ValidationSecret(name string, caPEM []byte) *tlsv3.Secret {
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: caPEM}},
	}}}
}

func transportSocket(m proto.Message) (*core.TransportSocket, error) {
	a, err := anypb.New(m)
	if err != nil {
		return nil, err
	}
	return &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: a}}, nil
}

func addTLSInspector(l *listener.Listener) error {
	a, err := anyOf(&tlsinspector.TlsInspector{})
	if err != nil {
		return err
	}
	l.ListenerFilters = append(l.ListenerFilters, &listener.ListenerFilter{
		Name:       "envoy.filters.listener.tls_inspector",
		ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: a},
	})
	return nil
}

// chainSelector selects a filter chain by SNI regexes (RE2, full match)
// and, when set, the destination port (a regex over its decimal form) and
// address (one of ips, exact).
type chainSelector struct {
	chain   string
	regexes []string
	ports   string
	ips     []string
}

// chainMatcher is the listener's filter_chain_matcher: the SNI (from the
// TLS inspector) against each chain's regexes in order, the first match
// names the chain; no SNI or no match selects no chain and Envoy closes the
// connection. Filter chain matching by the unified matcher API is used
// rather than filter_chain_match.server_names because Envoy's "*.x" there
// matches names of any depth, while the policy's "*" stays within a label.
func chainMatcher(sel []chainSelector) (*matcherxds.Matcher, error) {
	sniInput, err := anyOf(&netinput.ServerNameInput{})
	if err != nil {
		return nil, err
	}
	portInput, err := anyOf(&netinput.DestinationPortInput{})
	if err != nil {
		return nil, err
	}
	ipInput, err := anyOf(&netinput.DestinationIPInput{})
	if err != nil {
		return nil, err
	}
	single := func(name string, input *anypb.Any, m *matcherxds.StringMatcher) *matcherxds.Matcher_MatcherList_Predicate {
		return &matcherxds.Matcher_MatcherList_Predicate{MatchType: &matcherxds.Matcher_MatcherList_Predicate_SinglePredicate_{
			SinglePredicate: &matcherxds.Matcher_MatcherList_Predicate_SinglePredicate{
				Input:   &xdscore.TypedExtensionConfig{Name: name, TypedConfig: input},
				Matcher: &matcherxds.Matcher_MatcherList_Predicate_SinglePredicate_ValueMatch{ValueMatch: m},
			},
		}}
	}
	regex := func(re string) *matcherxds.StringMatcher {
		return &matcherxds.StringMatcher{MatchPattern: &matcherxds.StringMatcher_SafeRegex{SafeRegex: &matcherxds.RegexMatcher{
			EngineType: &matcherxds.RegexMatcher_GoogleRe2{GoogleRe2: &matcherxds.RegexMatcher_GoogleRE2{}},
			Regex:      re,
		}}}
	}
	var fms []*matcherxds.Matcher_MatcherList_FieldMatcher
	for _, c := range sel {
		action, err := anyOf(wrapperspb.String(c.chain))
		if err != nil {
			return nil, err
		}
		var where []*matcherxds.Matcher_MatcherList_Predicate
		if c.ports != "" {
			where = append(where, single("envoy.matching.inputs.destination_port", portInput, regex(c.ports)))
		}
		if len(c.ips) > 0 {
			var anyIP []*matcherxds.Matcher_MatcherList_Predicate
			for _, ip := range c.ips {
				anyIP = append(anyIP, single("envoy.matching.inputs.destination_ip", ipInput, &matcherxds.StringMatcher{MatchPattern: &matcherxds.StringMatcher_Exact{Exact: ip}}))
			}
			if len(anyIP) == 1 {
				where = append(where, anyIP[0])
			} else {
				where = append(where, &matcherxds.Matcher_MatcherList_Predicate{MatchType: &matcherxds.Matcher_MatcherList_Predicate_OrMatcher{
					OrMatcher: &matcherxds.Matcher_MatcherList_Predicate_PredicateList{Predicate: anyIP}}})
			}
		}
		onMatch := &matcherxds.Matcher_OnMatch{OnMatch: &matcherxds.Matcher_OnMatch_Action{Action: &xdscore.TypedExtensionConfig{Name: c.chain, TypedConfig: action}}}
		if len(c.regexes) == 0 && len(where) > 0 {
			// No SNI condition (plaintext chains).
			p := where[0]
			if len(where) > 1 {
				p = &matcherxds.Matcher_MatcherList_Predicate{MatchType: &matcherxds.Matcher_MatcherList_Predicate_AndMatcher{
					AndMatcher: &matcherxds.Matcher_MatcherList_Predicate_PredicateList{Predicate: where}}}
			}
			fms = append(fms, &matcherxds.Matcher_MatcherList_FieldMatcher{Predicate: p, OnMatch: onMatch})
			continue
		}
		// One field matcher per pattern keeps each regex small (Envoy
		// bounds RE2 program size).
		for _, re := range c.regexes {
			p := single("envoy.matching.inputs.server_name", sniInput, regex(re))
			if len(where) > 0 {
				p = &matcherxds.Matcher_MatcherList_Predicate{MatchType: &matcherxds.Matcher_MatcherList_Predicate_AndMatcher{
					AndMatcher: &matcherxds.Matcher_MatcherList_Predicate_PredicateList{Predicate: append([]*matcherxds.Matcher_MatcherList_Predicate{p}, where...)}}}
			}
			fms = append(fms, &matcherxds.Matcher_MatcherList_FieldMatcher{Predicate: p, OnMatch: onMatch})
		}
	}
	return &matcherxds.Matcher{MatcherType: &matcherxds.Matcher_MatcherList_{MatcherList: &matcherxds.Matcher_MatcherList{Matchers: fms}}}, nil
}

// serverNameRegexes validates policy serverNames patterns and translates
// each into an RE2 regex with the matchPattern semantics, recording the
// normalised patterns in seen (a pattern in two chains is a mistake).
func serverNameRegexes(in []string, seen map[string]bool) ([]string, error) {
	out := make([]string, 0, len(in))
	for _, n := range in {
		m, err := matchpattern.Compile(n)
		if err != nil {
			return nil, fmt.Errorf("server name %q: %w", n, err)
		}
		p := m.String()
		if seen[p] {
			return nil, fmt.Errorf("server name %q in two chains", p)
		}
		seen[p] = true
		out = append(out, SNIRegex(p))
	}
	return out, nil
}

// SNIRegex translates a valid, normalised matchPattern into an RE2 regex
// matching the same names (case-insensitive, optional trailing dot; Envoy
// matches regexes against the whole value).
func SNIRegex(pattern string) string {
	const label = `[-a-z0-9_]`
	if strings.Trim(pattern, "*") == "" {
		return ".+"
	}
	var b strings.Builder
	b.WriteString("(?i)")
	rest := pattern
	if strings.HasPrefix(rest, "**.") {
		b.WriteString(`(?:` + label + `+\.)+`)
		rest = rest[3:]
	}
	for i, l := range strings.Split(rest, ".") {
		if i > 0 {
			b.WriteString(`\.`)
		}
		if strings.Trim(l, "*") == "" {
			b.WriteString(label + `+`) // a label is never empty
			continue
		}
		for j, piece := range strings.Split(l, "*") {
			if j > 0 {
				b.WriteString(label + `*`)
			}
			b.WriteString(regexp.QuoteMeta(piece))
		}
	}
	b.WriteString(`\.?`)
	return b.String()
}

// PolicyTLSListener is the TLS listener of a node's datapath: transparent,
// one per direction scope (every local endpoint's ingress, or one
// endpoint's egress), it carries serverNames pass-through chains and
// interception chains side by side. A chain is selected by the connection's
// original destination address and port (the policy's toPorts) and by the
// ClientHello's SNI; a connection no chain selects — another SNI, another
// port, no SNI, not TLS — is closed, so the client's handshake fails.
//
// Chains are tried in order, with every chain that names server names
// before those that do not (an interception of any SNI), so a named
// pass-through or interception wins over a catch-all on the same port.
type PolicyTLSListener struct {
	Name        string
	Address     string
	Port        uint32
	Transparent bool
	Chains      []PolicyTLSChain
	// StatPrefix defaults to Name.
	StatPrefix string
}

// PolicyTLSChain is one filter chain of a PolicyTLSListener.
type PolicyTLSChain struct {
	// ServerNames select by SNI (matchPattern language, as
	// SNIRoute.ServerNames); empty selects every ClientHello that has an
	// SNI, and is only allowed for interception (a pass-through of every
	// name is a plain L4 allow, not a TLS rule).
	ServerNames []string
	// Ports are the destination port ranges the chain applies to; empty:
	// every port.
	Ports []PortRange
	// DestinationIPs restrict the chain to these original destination
	// addresses (an ingress listener shared by several endpoints); empty:
	// any.
	DestinationIPs []string
	// Certificate is the SDS name of the certificate presented to the
	// client (terminatingTLS): the chain intercepts. Empty: the chain
	// passes the connection through untouched (tcp_proxy to Cluster).
	Certificate string
	// Cluster is the upstream: an OriginatingCluster or a plain cluster
	// for interception, a TCP cluster for pass-through.
	Cluster string
	// Filters are ward HTTP filters of an interception chain.
	Filters []ModuleFilter
	// ALPN offered to clients by an interception chain; default h2 and
	// http/1.1.
	ALPN []string
	// Plaintext chains take plain HTTP (originatingTLS without
	// terminatingTLS): selected by address and port only (Ports required,
	// no ServerNames, no Certificate), ward filters, then Cluster (an
	// OriginatingCluster with AutoSNI). They come last: a ClientHello on
	// the same port is matched by the TLS chains first.
	Plaintext bool
}

// PortRange is a destination port range; End 0 means just Port.
type PortRange struct {
	Port, End uint16
}

// maxChainPorts bounds the ports one chain expands to in its matcher.
const maxChainPorts = 1024

// Build returns the Envoy listener. A listener without chains is an error:
// the caller leaves it out (the redirected connections then find no
// listener and fail, as they would find no chain).
func (p PolicyTLSListener) Build() (*listener.Listener, error) {
	if p.Name == "" {
		return nil, errors.New("xds: PolicyTLSListener needs a Name")
	}
	if len(p.Chains) == 0 {
		return nil, fmt.Errorf("xds: PolicyTLSListener %s: no chains", p.Name)
	}
	prefix := p.StatPrefix
	if prefix == "" {
		prefix = p.Name
	}
	l := listenerBase(p.Name, p.Address, p.Port, p.Transparent)
	if err := addTLSInspector(l); err != nil {
		return nil, err
	}
	var named, catchAll, plain []chainSelector
	for i, c := range p.Chains {
		where := fmt.Sprintf("xds: PolicyTLSListener %s: chains[%d]", p.Name, i)
		if c.Cluster == "" {
			return nil, fmt.Errorf("%s: no Cluster", where)
		}
		name := fmt.Sprintf("%s/%d", p.Name, i)
		sel := chainSelector{chain: name, ips: c.DestinationIPs}
		var err error
		if sel.ports, err = portRegex(c.Ports); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		switch {
		case c.Plaintext:
			if sel.ports == "" || len(c.ServerNames) > 0 || c.Certificate != "" {
				return nil, fmt.Errorf("%s: a plaintext chain needs Ports and no ServerNames nor Certificate", where)
			}
			plain = append(plain, sel)
		case len(c.ServerNames) == 0:
			if c.Certificate == "" {
				return nil, fmt.Errorf("%s: a pass-through chain needs ServerNames", where)
			}
			sel.regexes = []string{".+"}
			catchAll = append(catchAll, sel)
		default:
			// Patterns may repeat across chains of different ports or
			// addresses; the first chain in order wins.
			if sel.regexes, err = serverNameRegexes(c.ServerNames, map[string]bool{}); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
			named = append(named, sel)
		}
		fc := &listener.FilterChain{Name: name}
		switch {
		case c.Plaintext:
			m, err := httpConnectionManager(name, prefix, c.Cluster, nil, c.Filters)
			if err != nil {
				return nil, err
			}
			fc.Filters = []*listener.Filter{m}
		case c.Certificate == "":
			tp, err := anyOf(&tcpproxy.TcpProxy{StatPrefix: prefix, ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: c.Cluster}})
			if err != nil {
				return nil, err
			}
			fc.Filters = []*listener.Filter{{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listener.Filter_TypedConfig{TypedConfig: tp}}}
		default:
			alpn := c.ALPN
			if len(alpn) == 0 {
				alpn = []string{"h2", "http/1.1"}
			}
			if fc.TransportSocket, err = transportSocket(&tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
				TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{SDSRef(c.Certificate)},
				AlpnProtocols:                  alpn,
			}}); err != nil {
				return nil, err
			}
			m, err := interceptHCM(name, prefix, InterceptChain{Cluster: c.Cluster, Filters: c.Filters})
			if err != nil {
				return nil, err
			}
			fc.Filters = []*listener.Filter{m}
		}
		l.FilterChains = append(l.FilterChains, fc)
	}
	var err error
	if l.FilterChainMatcher, err = chainMatcher(append(append(named, catchAll...), plain...)); err != nil {
		return nil, err
	}
	return l, nil
}

// portRegex is an RE2 regex matching the decimal ports of rs ("" for
// every port).
func portRegex(rs []PortRange) (string, error) {
	var alts []string
	for _, r := range rs {
		if r.Port == 0 {
			return "", nil // port 0: every port
		}
		end := max(r.End, r.Port)
		if len(alts)+int(end-r.Port)+1 > maxChainPorts {
			return "", fmt.Errorf("ports: more than %d ports in one TLS rule", maxChainPorts)
		}
		for p := int(r.Port); p <= int(end); p++ {
			alts = append(alts, fmt.Sprint(p))
		}
	}
	if len(alts) == 0 {
		return "", nil
	}
	return strings.Join(alts, "|"), nil
}

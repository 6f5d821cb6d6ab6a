package xds

import (
	"regexp"
	"strings"
	"testing"

	matcherxds "github.com/cncf/xds/go/xds/type/matcher/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	sfshttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/set_filter_state/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/wardproxy/ward/policy/matchpattern"
)

func TestSNIListenerBuild(t *testing.T) {
	for _, tc := range []struct {
		name    string
		l       SNIListener
		wantErr string
	}{
		{name: "no name", l: SNIListener{Routes: []SNIRoute{{ServerNames: []string{"a.example"}, Cluster: "c"}}}, wantErr: "needs a Name"},
		{name: "no routes", l: SNIListener{Name: "l"}, wantErr: "no routes"},
		{name: "route without names", l: SNIListener{Name: "l", Routes: []SNIRoute{{Cluster: "c"}}}, wantErr: "routes[0]: no ServerNames"},
		{name: "route without cluster", l: SNIListener{Name: "l", Routes: []SNIRoute{{ServerNames: []string{"a.example"}}}}, wantErr: "routes[0]: no Cluster"},
		{name: "name twice", l: SNIListener{Name: "l", Routes: []SNIRoute{
			{ServerNames: []string{"a.example"}, Cluster: "c"},
			{ServerNames: []string{"A.example."}, Cluster: "d"},
		}}, wantErr: `routes[1]: server name "a.example" in two chains`},
		{name: "inner double star", l: SNIListener{Name: "l", Routes: []SNIRoute{{ServerNames: []string{"a.**.example"}, Cluster: "c"}}}, wantErr: `server name "a.**.example"`},
		{name: "bad character", l: SNIListener{Name: "l", Routes: []SNIRoute{{ServerNames: []string{"a b.example"}, Cluster: "c"}}}, wantErr: "not allowed"},
		{name: "empty label", l: SNIListener{Name: "l", Routes: []SNIRoute{{ServerNames: []string{"a..example"}, Cluster: "c"}}}, wantErr: "empty label"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.l.Build()
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Build() error = %v; want one containing %q", err, tc.wantErr)
			}
		})
	}

	l, err := SNIListener{Name: "sni", Address: "0.0.0.0", Port: 15001, Transparent: true, Routes: []SNIRoute{
		{ServerNames: []string{"One.One.One.One", "*.cilium.io"}, Cluster: "out"},
	}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	if got := listenerFilterNames(l); strings.Join(got, ",") != "envoy.filters.listener.original_dst,envoy.filters.listener.tls_inspector" {
		t.Errorf("listener filters = %v; want original_dst then tls_inspector", got)
	}
	if len(l.GetFilterChains()) != 1 || l.GetDefaultFilterChain() != nil {
		t.Fatalf("filter chains = %d, default %v; want 1 and no default (unmatched SNI is refused)", len(l.GetFilterChains()), l.GetDefaultFilterChain())
	}
	if got := chainRegexes(t, l); got != "sni/0: (?i)one\\.one\\.one\\.one\\.? (?i)[-a-z0-9_]+\\.cilium\\.io\\.?" {
		t.Errorf("chain matcher = %s", got)
	}
	if ts := l.GetFilterChains()[0].GetTransportSocket(); ts != nil {
		t.Errorf("passthrough chain has a transport socket %v; want none (no termination)", ts)
	}
}

// chainRegexes renders a listener's filter_chain_matcher as "chain: regex
// regex, chain: ...".
func chainRegexes(t *testing.T, l *listener.Listener) string {
	t.Helper()
	var parts []string
	last := ""
	for _, fm := range l.GetFilterChainMatcher().GetMatcherList().GetMatchers() {
		sp := fm.GetPredicate().GetSinglePredicate()
		if sp.GetInput().GetName() != "envoy.matching.inputs.server_name" {
			t.Errorf("matcher input %s; want the server name", sp.GetInput().GetName())
		}
		chain := fm.GetOnMatch().GetAction().GetName()
		re := sp.GetValueMatch().GetSafeRegex().GetRegex()
		if chain != last {
			parts = append(parts, chain+": "+re)
			last = chain
		} else {
			parts[len(parts)-1] += " " + re
		}
	}
	if l.GetFilterChainMatcher().GetOnNoMatch() != nil {
		t.Error("chain matcher has on_no_match; want none (unmatched SNI refused)")
	}
	return strings.Join(parts, ", ")
}

// TestSNIRegex checks that the RE2 translation of each pattern accepts
// exactly the names the policy's matchpattern accepts.
func TestSNIRegex(t *testing.T) {
	names := []string{
		"cilium.io", "CILIUM.io", "cilium.io.", "sub.cilium.io", "a.b.cilium.io", "xcilium.io", "sub.cilium.io.x",
		"one.one.one.one", "one-one.one.one", "api.ward.test", "a_b.cilium.io", "a.cilium.io.", ".cilium.io", "a..cilium.io",
		"partial.com", "part-extra-ial.com", "part.ial.com", "", "a*b.cilium.io", "a\\.cilium.io", "x.y.z",
	}
	for _, p := range []string{"cilium.io", "*.cilium.io", "**.cilium.io", "part*ial.com", "*", "one.one.one.one", "*.*.io", "a*.cilium.io", "*cilium.io"} {
		m, err := matchpattern.Compile(p)
		if err != nil {
			t.Fatal(err)
		}
		re := regexp.MustCompile("^(?:" + SNIRegex(m.String()) + ")$")
		for _, n := range names {
			if got, want := re.MatchString(n), m.Match(n) && n != ""; got != want {
				t.Errorf("SNIRegex(%q) = %s matches %q: %v; matchpattern says %v", p, re, n, got, want)
			}
		}
	}
}

func listenerFilterNames(l *listener.Listener) []string {
	var out []string
	for _, f := range l.GetListenerFilters() {
		out = append(out, f.GetName())
	}
	return out
}

func TestInterceptListenerBuild(t *testing.T) {
	ward := []ModuleFilter{{Name: "ward.http", Config: []byte(`{"xds_socket":"/x","node":"n"}`)}}
	if _, err := (InterceptListener{Name: "l", Chains: []InterceptChain{
		{Certificate: "ns/a", Cluster: "c"},
		{Certificate: "ns/b", Cluster: "c"},
	}}).Build(); err == nil || !strings.Contains(err.Error(), "second chain without ServerNames") {
		t.Errorf("two catch-all chains: error %v; want one naming the second chain", err)
	}
	// The catch-all chain is matched last, and only when an SNI is present.
	ca, err := (InterceptListener{Name: "l", Chains: []InterceptChain{
		{Certificate: "ns/any", Cluster: "c"},
		{ServerNames: []string{"a.example"}, Certificate: "ns/a", Cluster: "c"},
	}}).Build()
	if err != nil {
		t.Fatal(err)
	}
	if got := chainRegexes(t, ca); got != `l/1: (?i)a\.example\.?, l/0: .+` {
		t.Errorf("chain matcher = %s; want the named chain first, the catch-all last", got)
	}
	if _, err := (InterceptListener{Name: "l", Chains: []InterceptChain{{ServerNames: []string{"a.example"}, Cluster: "c"}}}).Build(); err == nil {
		t.Error("chain without Certificate built; want an error")
	}

	l, err := InterceptListener{Name: "tls", Address: "127.0.0.1", Port: 10443, Chains: []InterceptChain{
		{ServerNames: []string{"httpbin.org"}, Certificate: "kube-system/httpbin-tls-data", Cluster: "orig", Filters: ward},
		{ServerNames: []string{"api.example"}, Certificate: "kube-system/httpbin-tls-data", Cluster: "orig", Filters: ward},
	}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	if got := listenerFilterNames(l); strings.Join(got, ",") != "envoy.filters.listener.tls_inspector" {
		t.Errorf("listener filters = %v; want tls_inspector", got)
	}
	for i, fc := range l.GetFilterChains() {
		var dtc tlsv3.DownstreamTlsContext
		if err := fc.GetTransportSocket().GetTypedConfig().UnmarshalTo(&dtc); err != nil {
			t.Fatal(err)
		}
		common := dtc.GetCommonTlsContext()
		if len(common.GetTlsCertificates()) != 0 {
			t.Errorf("chain %d holds an inline certificate; want an SDS reference only", i)
		}
		refs := common.GetTlsCertificateSdsSecretConfigs()
		if len(refs) != 1 || refs[0].GetName() != "kube-system/httpbin-tls-data" || refs[0].GetSdsConfig().GetAds() == nil {
			t.Errorf("chain %d certificate refs = %v; want kube-system/httpbin-tls-data over ADS", i, refs)
		}
		var m hcm.HttpConnectionManager
		if err := fc.GetFilters()[0].GetTypedConfig().UnmarshalTo(&m); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, f := range m.GetHttpFilters() {
			names = append(names, f.GetName())
		}
		if strings.Join(names, ",") != "envoy.filters.http.set_filter_state,ward.http.0,envoy.filters.http.router" {
			t.Errorf("chain %d http filters = %v", i, names)
		}
		var sfs sfshttp.Config
		if err := m.GetHttpFilters()[0].GetTypedConfig().UnmarshalTo(&sfs); err != nil {
			t.Fatal(err)
		}
		var keys []string
		for _, v := range sfs.GetOnRequestHeaders() {
			keys = append(keys, v.GetObjectKey()+"="+v.GetFormatString().GetTextFormatSource().GetInlineString())
		}
		if got := strings.Join(keys, " "); got != "envoy.network.upstream_server_name=%REQUESTED_SERVER_NAME% envoy.network.upstream_subject_alt_names=%REQUESTED_SERVER_NAME%" {
			t.Errorf("chain %d filter state = %s; want the upstream SNI and SAN from the ClientHello", i, got)
		}
	}
}

func TestOriginatingClusterBuild(t *testing.T) {
	if _, err := (OriginatingCluster{Name: "c"}).Build(); err == nil {
		t.Error("cluster without TrustedCA built; want an error (never originate unverified)")
	}
	c, err := OriginatingCluster{Name: "orig", TrustedCA: "kube-system/tls-orig-data:ca.crt"}.Build()
	if err != nil {
		t.Fatal(err)
	}
	if c.GetType() != cluster.Cluster_ORIGINAL_DST {
		t.Errorf("type = %v; want ORIGINAL_DST without an Address", c.GetType())
	}
	utc := upstreamTLS(t, c)
	if got := utc.GetCommonTlsContext().GetValidationContextSdsSecretConfig().GetName(); got != "kube-system/tls-orig-data:ca.crt" {
		t.Errorf("validation context ref = %q", got)
	}

	c, err = OriginatingCluster{Name: "s", Address: "127.0.0.1", Port: 8443, TrustedCA: "ca", SNI: "api.example", SubjectAltNames: []string{"api.example"}, Certificate: "client"}.Build()
	if err != nil {
		t.Fatal(err)
	}
	utc = upstreamTLS(t, c)
	combined := utc.GetCommonTlsContext().GetCombinedValidationContext()
	if combined.GetValidationContextSdsSecretConfig().GetName() != "ca" {
		t.Errorf("combined validation context ref = %v; want ca", combined.GetValidationContextSdsSecretConfig())
	}
	if ms := combined.GetDefaultValidationContext().GetMatchTypedSubjectAltNames(); len(ms) != 1 || ms[0].GetMatcher().GetExact() != "api.example" {
		t.Errorf("SAN matchers = %v; want exact api.example", ms)
	}
	if utc.GetSni() != "api.example" || utc.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()[0].GetName() != "client" {
		t.Errorf("sni %q, client certificate %v", utc.GetSni(), utc.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs())
	}
	// AutoSNI: SNI and SAN check from each request's Host header.
	c, err = OriginatingCluster{Name: "auto", TrustedCA: "ca", AutoSNI: true}.Build()
	if err != nil {
		t.Fatal(err)
	}
	var opts upstreamhttp.HttpProtocolOptions
	if err := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].UnmarshalTo(&opts); err != nil {
		t.Fatal(err)
	}
	if u := opts.GetUpstreamHttpProtocolOptions(); !u.GetAutoSni() || !u.GetAutoSanValidation() {
		t.Errorf("upstream http protocol options = %v; want auto_sni and auto_san_validation", u)
	}
	// ALPN: h2 and http/1.1 offered, the protocol the upstream picks.
	c, err = OriginatingCluster{Name: "alpn", TrustedCA: "ca", ALPN: true}.Build()
	if err != nil {
		t.Fatal(err)
	}
	if got := upstreamTLS(t, c).GetCommonTlsContext().GetAlpnProtocols(); strings.Join(got, ",") != "h2,http/1.1" {
		t.Errorf("ALPN = %v; want h2,http/1.1", got)
	}
	if err := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].UnmarshalTo(&opts); err != nil {
		t.Fatal(err)
	}
	if opts.GetAutoConfig() == nil {
		t.Errorf("protocol options = %v; want auto_config", &opts)
	}
}

func upstreamTLS(t *testing.T, c *cluster.Cluster) *tlsv3.UpstreamTlsContext {
	t.Helper()
	var u tlsv3.UpstreamTlsContext
	if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(&u); err != nil {
		t.Fatal(err)
	}
	return &u
}

func TestSecretBuilders(t *testing.T) {
	s := CertificateSecret("ns/n", []byte("CERT"), []byte("KEY"))
	if s.GetName() != "ns/n" || string(s.GetTlsCertificate().GetPrivateKey().GetInlineBytes()) != "KEY" || string(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes()) != "CERT" {
		t.Errorf("CertificateSecret = %v", s)
	}
	v := ValidationSecret("ns/n:ca.crt", []byte("CA"))
	if v.GetName() != "ns/n:ca.crt" || string(v.GetValidationContext().GetTrustedCa().GetInlineBytes()) != "CA" {
		t.Errorf("ValidationSecret = %v", v)
	}
	// Both validate as Envoy resources.
	for _, m := range []proto.Message{s, v} {
		if err := m.(interface{ Validate() error }).Validate(); err != nil {
			t.Errorf("%s: %v", protojson.Format(m), err)
		}
	}
}

func TestInterceptListenerPrune(t *testing.T) {
	x := InterceptListener{Name: "l", Chains: []InterceptChain{
		{ServerNames: []string{"good.example"}, Certificate: "ns/good", Cluster: "c1"},
		{ServerNames: []string{"badcert.example"}, Certificate: "ns/bad", Cluster: "c1"},
		{ServerNames: []string{"badca.example"}, Certificate: "ns/good", Cluster: "c2"},
	}}
	published := map[string]bool{"ns/good": true, "ns/ca:ca.crt": true}
	got, err := x.Prune(func(n string) bool { return published[n] }, map[string]string{"c1": "ns/ca:ca.crt", "c2": "ns/badca:ca.crt"})
	if len(got.Chains) != 1 || got.Chains[0].ServerNames[0] != "good.example" {
		t.Errorf("Prune kept %v; want only good.example", got.Chains)
	}
	for _, want := range []string{"badcert.example: terminating secret ns/bad unavailable", "badca.example: originating secret ns/badca:ca.crt unavailable"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Prune error = %v; want one containing %q", err, want)
		}
	}
	if len(x.Chains) != 3 {
		t.Error("Prune modified its receiver's chains")
	}
}

// describePredicate renders a chain matcher predicate: "sni=re" for a
// single SNI predicate, "port=re", "ip=a", joined with "&" and "|".
func describePredicate(p interface {
	GetSinglePredicate() *matcherxds.Matcher_MatcherList_Predicate_SinglePredicate
	GetAndMatcher() *matcherxds.Matcher_MatcherList_Predicate_PredicateList
	GetOrMatcher() *matcherxds.Matcher_MatcherList_Predicate_PredicateList
}) string {
	join := func(l *matcherxds.Matcher_MatcherList_Predicate_PredicateList, sep string) string {
		var parts []string
		for _, q := range l.GetPredicate() {
			parts = append(parts, describePredicate(q))
		}
		return "(" + strings.Join(parts, sep) + ")"
	}
	switch {
	case p.GetAndMatcher() != nil:
		return join(p.GetAndMatcher(), " & ")
	case p.GetOrMatcher() != nil:
		return join(p.GetOrMatcher(), " | ")
	}
	sp := p.GetSinglePredicate()
	v := sp.GetValueMatch().GetSafeRegex().GetRegex()
	if v == "" {
		v = sp.GetValueMatch().GetExact()
	}
	return strings.TrimPrefix(sp.GetInput().GetName(), "envoy.matching.inputs.") + "=" + v
}

func TestPolicyTLSListenerBuild(t *testing.T) {
	for _, tc := range []struct {
		name    string
		l       PolicyTLSListener
		wantErr string
	}{
		{name: "no name", l: PolicyTLSListener{Chains: []PolicyTLSChain{{ServerNames: []string{"a.example"}, Cluster: "c"}}}, wantErr: "needs a Name"},
		{name: "no chains", l: PolicyTLSListener{Name: "l"}, wantErr: "no chains"},
		{name: "no cluster", l: PolicyTLSListener{Name: "l", Chains: []PolicyTLSChain{{ServerNames: []string{"a.example"}}}}, wantErr: "chains[0]: no Cluster"},
		{name: "pass-through of every name", l: PolicyTLSListener{Name: "l", Chains: []PolicyTLSChain{{Cluster: "c"}}}, wantErr: "pass-through chain needs ServerNames"},
		{name: "bad name", l: PolicyTLSListener{Name: "l", Chains: []PolicyTLSChain{{ServerNames: []string{"a..example"}, Cluster: "c"}}}, wantErr: "empty label"},
		{name: "plaintext without ports", l: PolicyTLSListener{Name: "l", Chains: []PolicyTLSChain{{Plaintext: true, Cluster: "c"}}}, wantErr: "plaintext chain needs Ports"},
		{name: "plaintext with names", l: PolicyTLSListener{Name: "l", Chains: []PolicyTLSChain{{Plaintext: true, Ports: []PortRange{{Port: 80}}, ServerNames: []string{"a.example"}, Cluster: "c"}}}, wantErr: "plaintext chain needs Ports and no ServerNames"},
		{name: "too many ports", l: PolicyTLSListener{Name: "l", Chains: []PolicyTLSChain{{ServerNames: []string{"a.example"}, Cluster: "c", Ports: []PortRange{{Port: 1000, End: 3000}}}}}, wantErr: "more than 1024 ports"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.l.Build(); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Build() error = %v; want one containing %q", err, tc.wantErr)
			}
		})
	}

	ward := []ModuleFilter{{Name: "ward.http", Config: []byte(`{"xds_socket":"/x","node":"n"}`)}}
	l, err := PolicyTLSListener{Name: "tls", Address: "0.0.0.0", Port: 15002, Transparent: true, Chains: []PolicyTLSChain{
		// A catch-all interception, listed first, is matched last.
		{Ports: []PortRange{{Port: 8443}}, Certificate: "ns/any", Cluster: "orig", Filters: ward},
		{ServerNames: []string{"api.example"}, Ports: []PortRange{{Port: 443}, {Port: 8443, End: 8444}}, DestinationIPs: []string{"10.0.0.1", "10.0.0.2"}, Certificate: "ns/api", Cluster: "orig", Filters: ward},
		// The same name on another port passes through.
		{ServerNames: []string{"api.example", "*.pass.example"}, Ports: []PortRange{{Port: 9443}}, Cluster: "pass"},
		// Plain HTTP upgraded to TLS upstream, matched last.
		{Plaintext: true, Ports: []PortRange{{Port: 8080}}, DestinationIPs: []string{"10.0.0.1"}, Cluster: "auto", Filters: ward},
	}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	if got := listenerFilterNames(l); strings.Join(got, ",") != "envoy.filters.listener.original_dst,envoy.filters.listener.tls_inspector" {
		t.Errorf("listener filters = %v; want original_dst then tls_inspector", got)
	}
	var got []string
	for _, fm := range l.GetFilterChainMatcher().GetMatcherList().GetMatchers() {
		got = append(got, fm.GetOnMatch().GetAction().GetName()+": "+describePredicate(fm.GetPredicate()))
	}
	want := []string{
		`tls/1: (server_name=(?i)api\.example\.? & destination_port=443|8443|8444 & (destination_ip=10.0.0.1 | destination_ip=10.0.0.2))`,
		`tls/2: (server_name=(?i)api\.example\.? & destination_port=9443)`,
		`tls/2: (server_name=(?i)[-a-z0-9_]+\.pass\.example\.? & destination_port=9443)`,
		`tls/0: (server_name=.+ & destination_port=8443)`,
		`tls/3: (destination_port=8080 & destination_ip=10.0.0.1)`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("chain matcher:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if l.GetDefaultFilterChain() != nil || l.GetFilterChainMatcher().GetOnNoMatch() != nil {
		t.Error("listener has a default chain; want unmatched connections refused")
	}
	fcs := l.GetFilterChains()
	if fcs[3].GetTransportSocket() != nil || fcs[3].GetFilters()[0].GetName() != "envoy.filters.network.http_connection_manager" {
		t.Errorf("plaintext chain = %v; want the HTTP connection manager without termination", fcs[3])
	}
	if fcs[2].GetTransportSocket() != nil || fcs[2].GetFilters()[0].GetName() != "envoy.filters.network.tcp_proxy" {
		t.Errorf("pass-through chain = %v; want tcp_proxy without termination", fcs[2])
	}
	for _, i := range []int{0, 1} {
		var dtc tlsv3.DownstreamTlsContext
		if err := fcs[i].GetTransportSocket().GetTypedConfig().UnmarshalTo(&dtc); err != nil {
			t.Fatalf("chain %d: %v", i, err)
		}
		if refs := dtc.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs(); len(refs) != 1 || refs[0].GetSdsConfig().GetAds() == nil {
			t.Errorf("chain %d certificate refs = %v; want one SDS reference", i, refs)
		}
		if fcs[i].GetFilters()[0].GetName() != "envoy.filters.network.http_connection_manager" {
			t.Errorf("chain %d filters = %v; want the HTTP connection manager", i, fcs[i].GetFilters())
		}
	}
}

package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net/netip"
	"strings"
	"testing"
	"time"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/secrets"
)

const tlsBuildPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: tls, namespace: default}
spec:
  endpointSelector:
    matchLabels: {app: client}
  egress:
  - toCIDR: [192.0.2.1/32]
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
      terminatingTLS: {secret: {name: intercept}}
      originatingTLS: {secret: {name: cas}}
      rules:
        http: [{method: GET}]
    - ports: [{port: "8443", protocol: TCP}]
      serverNames: [pass.example]
    - ports: [{port: "9443", protocol: TCP}]
      terminatingTLS: {secret: {name: missing}}
      rules:
        http: [{method: GET}]
    - ports: [{port: "8080", protocol: TCP}]
      originatingTLS: {secret: {name: cas}}
      rules:
        http: [{method: GET}]
  ingress:
  - fromEntities: [world]
    toPorts:
    - ports: [{port: "10443", protocol: TCP}]
      serverNames: [in.example]
`

// selfSigned returns a PEM certificate and key for name.
func selfSigned(t *testing.T, name string) (crt, key []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

// tlsState resolves tlsBuildPolicy for a local client endpoint.
func tlsState(t *testing.T) *State {
	t.Helper()
	ps, err := policy.Parse("tls.yaml", []byte(tlsBuildPolicy))
	if err != nil {
		t.Fatal(err)
	}
	repo := policy.NewRepository(policy.Config{})
	for _, p := range ps {
		repo.Upsert(p)
	}
	if _, err := repo.UpsertEndpoint(policy.Endpoint{ID: 1, Labels: policy.K8sLabels(map[string]string{"app": "client"}, "default")}); err != nil {
		t.Fatal(err)
	}
	return &State{Policy: repo.Snapshot(), Workloads: []Workload{{Endpoint: Endpoint{Name: "client", ID: 1}, Addrs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}}}
}

func chainNames(l *listener.Listener) []string {
	var out []string
	for _, fm := range l.GetFilterChainMatcher().GetMatcherList().GetMatchers() {
		out = append(out, fm.GetOnMatch().GetAction().GetName())
	}
	return out
}

// TestTLSPolicyBuild: the listeners a policy's TLS rules make, and a rule
// whose secret is missing left out (its error naming the secret) while the
// others are built.
func TestTLSPolicyBuild(t *testing.T) {
	st := tlsState(t)
	dir := t.TempDir()
	crt, key := selfSigned(t, "api.example")
	if err := secrets.Write(dir, secrets.Ref{Namespace: "default", Name: "intercept"}, map[string][]byte{"tls.crt": crt, "tls.key": key}); err != nil {
		t.Fatal(err)
	}
	if err := secrets.Write(dir, secrets.Ref{Namespace: "default", Name: "cas"}, map[string][]byte{"ca.crt": crt}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		secretsDir string
		// wantErrs each appear in the error; wantListeners are the
		// listeners with their chain count.
		wantErrs      []string
		wantListeners map[string]int
		wantSecrets   []string
	}{
		{
			name:       "secrets directory",
			secretsDir: dir,
			wantErrs:   []string{"secret default/missing: secret not found", "terminating secret default/missing unavailable; rule left out"},
			// egress: 443 interception, 8443 pass-through, 8080 plain HTTP
			// to TLS; ingress: 10443.
			wantListeners: map[string]int{"ward-tls-egress-1": 3, "ward-tls-ingress": 1},
			wantSecrets:   []string{"default/cas:ca.crt", "default/intercept"},
		},
		{
			name:     "no secrets directory: serverNames only",
			wantErrs: []string{"need a secrets directory", "terminating secret default/intercept unavailable"},
			// Only the pass-through chains.
			wantListeners: map[string]int{"ward-tls-egress-1": 1, "ward-tls-ingress": 1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &Agent{cfg: Config{StateDir: t.TempDir(), SecretsDir: tc.secretsDir}, node: "n", log: slog.New(slog.DiscardHandler),
				dp: &datapath{cfg: DatapathConfig{}.withDefaults(), egress: map[uint64]uint16{1: 15100}}}
			tp, err := a.newTLSPolicy()
			if err != nil {
				t.Fatal(err)
			}
			res, err := tp.build(st)
			for _, w := range tc.wantErrs {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("build error = %v; want it to contain %q", err, w)
				}
			}
			got := map[string]int{}
			for _, r := range res.Listeners {
				l := r.(*listener.Listener)
				got[l.GetName()] = len(l.GetFilterChains())
				if n := len(chainNames(l)); n == 0 {
					t.Errorf("listener %s has no chain matcher entries", l.GetName())
				}
				if p := l.GetAddress().GetSocketAddress().GetPortValue(); (l.GetName() == "ward-tls-ingress" && p != 15002) || (l.GetName() == "ward-tls-egress-1" && p != 15300) {
					t.Errorf("listener %s on port %d; want 15002 (ingress) or 15300 (the first egress)", l.GetName(), p)
				}
			}
			if len(got) != len(tc.wantListeners) {
				t.Errorf("listeners = %v; want %v", got, tc.wantListeners)
			}
			for n, c := range tc.wantListeners {
				if got[n] != c {
					t.Errorf("listener %s has %d chains; want %d (all: %v)", n, got[n], c, got)
				}
			}
			var names []string
			for _, s := range res.Secrets {
				names = append(names, s.(interface{ GetName() string }).GetName())
			}
			if strings.Join(names, ",") != strings.Join(tc.wantSecrets, ",") {
				t.Errorf("secrets = %v; want %v", names, tc.wantSecrets)
			}
		})
	}
}

// TestTLSPort: TLS ports go to the TLS listeners, other kinds elsewhere.
func TestTLSPort(t *testing.T) {
	st := tlsState(t)
	d := &datapath{cfg: DatapathConfig{}.withDefaults(), egress: map[uint64]uint16{1: 15101}}
	pol, _ := st.Policy.Endpoint(1)
	for _, lp := range pol.Egress.Proxy {
		if got := d.proxyPort(1, policy.Egress, lp); got != 15301 {
			t.Errorf("egress port %d (%s) proxied to %d; want the endpoint's TLS listener 15301", lp.Port, lp.Kind, got)
		}
	}
	for _, lp := range pol.Ingress.Proxy {
		if got := d.proxyPort(1, policy.Ingress, lp); got != 15002 {
			t.Errorf("ingress port %d (%s) proxied to %d; want the TLS ingress listener 15002", lp.Port, lp.Kind, got)
		}
	}
	if got := d.proxyPort(2, policy.Egress, pol.Egress.Proxy[0]); got != 0 {
		t.Errorf("an endpoint without egress listeners is proxied to %d; want 0 (dropped)", got)
	}
}

func TestOverlapWarning(t *testing.T) {
	term := &policy.TLSContext{Secret: &policy.Secret{Namespace: "ns", Name: "s"}}
	for _, tc := range []struct {
		name string
		sels []*policy.L7Selection
		want string
	}{
		{name: "one interception", sels: []*policy.L7Selection{{Wildcard: true, ServerNames: []string{"a"}, TerminatingTLS: term}}},
		{name: "two interceptions allowing all", sels: []*policy.L7Selection{
			{Wildcard: true, ServerNames: []string{"a"}, TerminatingTLS: term, AllowAll: true},
			{Wildcard: true, ServerNames: []string{"b"}, TerminatingTLS: term, AllowAll: true}}},
		{name: "two interceptions with rules", sels: []*policy.L7Selection{
			{Wildcard: true, ServerNames: []string{"a"}, TerminatingTLS: term},
			{Wildcard: true, ServerNames: []string{"b"}, TerminatingTLS: term, AllowAll: true}}, want: "ward.http does not select rules by SNI"},
		{name: "pass-through, same remotes", sels: []*policy.L7Selection{
			{Remotes: []policy.NumericIdentity{7}, ServerNames: []string{"a"}},
			{Remotes: []policy.NumericIdentity{7}, ServerNames: []string{"b"}}}},
		{name: "pass-through, other remotes", sels: []*policy.L7Selection{
			{Remotes: []policy.NumericIdentity{7}, ServerNames: []string{"a"}},
			{Remotes: []policy.NumericIdentity{8}, ServerNames: []string{"b"}}}, want: "not by remote"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := overlapWarning(&policy.L7Port{Port: 443, Selections: tc.sels})
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("overlapWarning = %q; want %q", got, tc.want)
			}
		})
	}
}

// Package envoytls runs TLS interception and serverNames (SNI) policy end
// to end: certificates made with the openssl binary as the seed's steps
// make them (an internal CA, a certificate for the intercepted name signed
// by it), secrets served from a secrets directory (package secrets) to the
// real Envoy by SDS reference, a real TLS upstream (Go net/http) with its
// own "public" CA, and curl / openssl s_client as clients.
//
// Without the BPF redirect, clients reach the listeners directly (curl
// --resolve name:port:127.0.0.1) and each listener's filter config names
// the client endpoint and the upstream's identity.
package envoytls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/wardproxy/ward/conformance/stack"
	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/internal/testenv"
	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/secrets"
	"github.com/wardproxy/ward/xds"
	"github.com/wardproxy/ward/xds/npds"
)

const (
	apiName    = "api.ward.test"    // the intercepted destination
	otherName  = "other.ward.test"  // also in the interception certificate; the upstream's certificate does not name it
	brokenName = "broken.ward.test" // its interception secret is broken
)

// pki is the certificate material of the scenario, made with openssl.
type pki struct {
	dir string
	// internal CA (interception) and its certificate for apiName/otherName
	internalCA, internalCAKey, interceptCrt, interceptKey string
	// "public" CA and the upstream's certificate for apiName
	publicCA, publicCAKey, upstreamCrt, upstreamKey string
	// a CA nobody trusts and an upstream certificate it signed
	rogueCA, rogueCAKey, rogueCrt, rogueKey string
}

func openssl(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command(testenv.RequireCommand(t, "openssl"), args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newCA makes a CA key and self-signed certificate (the seed's "Generate CA
// private key" and "Generate CA certificate" steps, without a passphrase).
func newCA(t *testing.T, dir, name string) (crt, key string) {
	return newCAAlg(t, dir, name, "")
}

// genKey makes a private key: alg "" is the seed's `openssl genrsa` (RSA
// 2048), "ec" an ECDSA P-256 key.
func genKey(t *testing.T, dir, key, alg string) {
	t.Helper()
	switch alg {
	case "":
		openssl(t, dir, "genrsa", "-out", key, "2048")
	case "ec":
		openssl(t, dir, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
	default:
		t.Fatalf("unknown key algorithm %q", alg)
	}
}

func newCAAlg(t *testing.T, dir, name, alg string) (crt, key string) {
	key, crt = name+".key", name+".crt"
	genKey(t, dir, key, alg)
	openssl(t, dir, "req", "-x509", "-new", "-nodes", "-key", key, "-sha256", "-days", "2", "-subj", "/CN="+name, "-out", crt)
	return filepath.Join(dir, crt), filepath.Join(dir, key)
}

// newLeaf makes a key, a signing request with the DNS name as common name,
// and a certificate signed by the CA (the seed's steps; the SAN extension
// is added because clients check SANs, not the common name).
func newLeaf(t *testing.T, dir, name, caCrt, caKey string, dnsNames ...string) (crt, key string) {
	return newLeafAlg(t, dir, name, "", caCrt, caKey, dnsNames...)
}

func newLeafAlg(t *testing.T, dir, name, alg, caCrt, caKey string, dnsNames ...string) (crt, key string) {
	key, csr, crt := name+".key", name+".csr", name+".crt"
	genKey(t, dir, key, alg)
	openssl(t, dir, "req", "-new", "-key", key, "-subj", "/CN="+dnsNames[0], "-out", csr)
	ext := name + ".ext"
	var sans []string
	for _, n := range dnsNames {
		sans = append(sans, "DNS:"+n)
	}
	if err := os.WriteFile(filepath.Join(dir, ext), []byte("subjectAltName="+strings.Join(sans, ",")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	openssl(t, dir, "x509", "-req", "-in", csr, "-CA", caCrt, "-CAkey", caKey, "-CAcreateserial", "-out", crt, "-days", "2", "-sha256", "-extfile", ext)
	return filepath.Join(dir, crt), filepath.Join(dir, key)
}

func newPKI(t *testing.T) *pki {
	p := &pki{dir: t.TempDir()}
	p.internalCA, p.internalCAKey = newCA(t, p.dir, "ward-internal-ca")
	p.interceptCrt, p.interceptKey = newLeaf(t, p.dir, "intercept", p.internalCA, p.internalCAKey, apiName, otherName)
	p.publicCA, p.publicCAKey = newCA(t, p.dir, "public-ca")
	p.upstreamCrt, p.upstreamKey = newLeaf(t, p.dir, "upstream", p.publicCA, p.publicCAKey, apiName)
	p.rogueCA, p.rogueCAKey = newCA(t, p.dir, "rogue-ca")
	p.rogueCrt, p.rogueKey = newLeaf(t, p.dir, "rogue", p.rogueCA, p.rogueCAKey, apiName)
	return p
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// upstream is a real HTTPS server on 127.0.0.1:0; it answers with the
// path and the SNI it saw and counts requests.
type upstream struct {
	port uint32
	hits atomic.Int64
}

func serveTLS(t *testing.T, crt, key string) *upstream {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{port: uint32(l.Addr().(*net.TCPAddr).Port)}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u.hits.Add(1)
			fmt.Fprintf(w, "upstream %s sni=%s", r.URL.Path, r.TLS.ServerName)
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{pair}, NextProtos: []string{"h2", "http/1.1"}},
		// Handshake failures (the rogue upstream) are expected; keep them
		// out of the test log.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeTLS(l, "", "") // returns ErrServerClosed on Close
	}()
	t.Cleanup(func() { srv.Close(); <-done })
	return u
}

// resolve parses the policy, resolves it for the client and the api
// endpoints and returns the policy resources, the api's identity and the
// client's egress L7 port of 443.
func resolve(t *testing.T) ([]*npds.NetworkPolicy, uint32, *policy.L7Selection) {
	t.Helper()
	b := read(t, "testdata/intercept.yaml")
	ps, err := policy.Parse("intercept.yaml", b)
	if err != nil {
		t.Fatal(err)
	}
	repo := policy.NewRepository(policy.Config{})
	for _, p := range ps {
		repo.Upsert(p)
	}
	ws := []xds.Workload{
		{Name: "client", ID: 1, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}},
		{Name: "api", ID: 2, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2")}, Remote: true},
	}
	for _, w := range ws {
		labels := map[string]string{"app": w.Name}
		if _, err := repo.UpsertEndpoint(policy.Endpoint{ID: w.ID, Labels: policy.K8sLabels(labels, "default")}); err != nil {
			t.Fatal(err)
		}
	}
	snap := repo.Snapshot()
	client, _ := snap.Endpoint(1)
	api, _ := snap.Endpoint(2)
	var sel *policy.L7Selection
	for _, lp := range client.Egress.Proxy {
		if lp.Port == 443 && len(lp.Selections) > 0 {
			sel = lp.Selections[0]
		}
	}
	if sel == nil || sel.TerminatingTLS == nil || sel.OriginatingTLS == nil {
		t.Fatalf("resolved policy has no TLS interception on 443: %+v", client.Egress)
	}
	out, _ := xds.Resources(snap, ws)
	return out, uint32(api.Identity), sel
}

// ref turns a policy TLS context into a secrets reference.
func ref(t *testing.T, c *policy.TLSContext) secrets.Ref {
	t.Helper()
	r, ok := secrets.RefFor(c)
	if !ok {
		t.Fatalf("TLS context %+v names no secret", c)
	}
	return r
}

type scenario struct {
	s                    *stack.Stack
	p                    *pki
	src                  *secrets.Source
	secretsDir           string
	term, orig, broken   secrets.Ref
	good, rogue          *upstream
	res                  xds.EnvoyResources
	intercept, untrusted uint32 // listener ports
	passthrough, any     uint32
	flows                string // the ward.http access log (flow records)
}

func TestTLS(t *testing.T) {
	testenv.RequireCommand(t, "openssl")
	testenv.RequireCommand(t, "curl")
	p := newPKI(t)
	ps, apiID, sel := resolve(t)
	sc := &scenario{p: p, secretsDir: t.TempDir(), term: ref(t, sel.TerminatingTLS), orig: ref(t, sel.OriginatingTLS)}
	// The secrets directory as an operator fills it: the interception
	// certificate and the bundle of CAs trusted toward upstreams.
	if err := secrets.Write(sc.secretsDir, sc.term, map[string][]byte{"tls.crt": read(t, p.interceptCrt), "tls.key": read(t, p.interceptKey)}); err != nil {
		t.Fatal(err)
	}
	if err := secrets.Write(sc.secretsDir, sc.orig, map[string][]byte{"ca.crt": read(t, p.publicCA)}); err != nil {
		t.Fatal(err)
	}
	// A broken secret for a third name: its key does not match its
	// certificate. Its rule must fail closed without taking the others
	// down.
	sc.broken = secrets.Ref{Namespace: sc.term.Namespace, Name: "broken-intercept"}
	brokenCrt, _ := newLeaf(t, p.dir, "broken", p.internalCA, p.internalCAKey, brokenName)
	if err := secrets.Write(sc.secretsDir, sc.broken, map[string][]byte{"tls.crt": read(t, brokenCrt), "tls.key": read(t, p.interceptKey)}); err != nil {
		t.Fatal(err)
	}
	var err error
	sc.src, err = secrets.New(secrets.Config{Dir: sc.secretsDir})
	if err != nil {
		t.Fatal(err)
	}
	sc.good = serveTLS(t, p.upstreamCrt, p.upstreamKey)
	sc.rogue = serveTLS(t, p.rogueCrt, p.rogueKey)

	sc.s = stack.Start(t, stack.Options{})
	s := sc.s
	sc.flows = filepath.Join(s.Dir, "flows.jsonl")
	filterCfg, _ := json.Marshal(map[string]any{"xds_socket": s.Socket, "node": s.Node, "direction": "egress", "endpoint": "client", "port": 443, "remote_identity": apiID, "access_log": sc.flows})
	ward := []xds.ModuleFilter{{Name: "ward.http", Config: filterCfg}}
	sc.intercept, sc.untrusted, sc.passthrough, sc.any = stack.FreePort(t), stack.FreePort(t), stack.FreePort(t), stack.FreePort(t)
	build := func(l interface {
		Build() (*listener.Listener, error)
	}) types.Resource {
		t.Helper()
		r, err := l.Build()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	cluster := func(o xds.OriginatingCluster) types.Resource {
		t.Helper()
		c, err := o.Build()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// What the agent does with the secrets a policy references: publish
	// those that validate, leave out the chains of those that do not.
	published := map[string]bool{}
	sec, err := sc.resolveSecrets()
	if err == nil || !strings.Contains(err.Error(), "secret ward-secrets/broken-intercept (tls.crt, tls.key): certificate and key") {
		t.Fatalf("Resolve error = %v; want one naming ward-secrets/broken-intercept", err)
	}
	for _, x := range sec {
		published[x.GetName()] = true
	}
	intercept, err := xds.InterceptListener{Name: "intercept", Address: "127.0.0.1", Port: sc.intercept, Chains: []xds.InterceptChain{
		{ServerNames: []string{apiName, otherName}, Certificate: sc.term.CertificateName(), Cluster: "api", Filters: ward},
		{ServerNames: []string{brokenName}, Certificate: sc.broken.CertificateName(), Cluster: "api", Filters: ward},
	}}.Prune(func(n string) bool { return published[n] }, map[string]string{"api": sc.orig.TrustedCAName()})
	if err == nil || !strings.Contains(err.Error(), "terminating secret ward-secrets/broken-intercept unavailable") || len(intercept.Chains) != 1 {
		t.Fatalf("Prune = %d chains, %v; want the broken chain left out", len(intercept.Chains), err)
	}
	// Two interception listeners use the same certificate and trust bundle:
	// Envoy must hold one copy of each.
	sc.res = xds.EnvoyResources{
		Listeners: []types.Resource{
			build(intercept),
			build(xds.InterceptListener{Name: "intercept-untrusted", Address: "127.0.0.1", Port: sc.untrusted, Chains: []xds.InterceptChain{{
				Certificate: sc.term.CertificateName(), Cluster: "api-untrusted", Filters: ward,
			}}}),
			build(xds.InterceptListener{Name: "intercept-any", Address: "127.0.0.1", Port: sc.any, Chains: []xds.InterceptChain{{
				Certificate: sc.term.CertificateName(), Cluster: "api", Filters: ward,
			}}}),
			build(xds.SNIListener{Name: "sni", Address: "127.0.0.1", Port: sc.passthrough, Routes: []xds.SNIRoute{{
				ServerNames: []string{apiName, "*.pass.ward.test"}, Cluster: "api-passthrough",
			}}}),
		},
		Clusters: []types.Resource{
			cluster(xds.OriginatingCluster{Name: "api", Address: "127.0.0.1", Port: sc.good.port, TrustedCA: sc.orig.TrustedCAName()}),
			cluster(xds.OriginatingCluster{Name: "api-untrusted", Address: "127.0.0.1", Port: sc.rogue.port, TrustedCA: sc.orig.TrustedCAName()}),
			xds.PassthroughCluster("api-passthrough", "127.0.0.1", sc.good.port),
		},
	}
	sc.pushSecrets(t)
	s.PushPolicy(t, ps, nil)

	t.Run("a broken secret fails its rule closed, others keep working", func(t *testing.T) {
		if out, ok := sClient(t, sc.intercept, "-servername", brokenName); ok {
			t.Errorf("openssl s_client -servername %s: handshake succeeded; want refused:\n%s", brokenName, out)
		}
		if got, want := sc.curl(t, sc.intercept, apiName, "--http1.1", "/public/ok"), "upstream /public/ok sni="+apiName+" 200"; got != want {
			t.Errorf("curl %s = %q; want %q", apiName, got, want)
		}
	})

	t.Run("intercepted request allowed", func(t *testing.T) {
		for _, h := range []string{"--http1.1", "--http2"} {
			if got, want := sc.curl(t, sc.intercept, apiName, h, "/public/x"), "upstream /public/x sni="+apiName+" 200"; got != want {
				t.Errorf("curl %s /public/x = %q; want %q", h, got, want)
			}
		}
	})
	t.Run("upstream SNI is the client's SNI, not the Host header", func(t *testing.T) {
		if got, want := sc.curl(t, sc.intercept, apiName, "--http1.1", "/public/h", "-H", "Host: "+otherName), "upstream /public/h sni="+apiName+" 200"; got != want {
			t.Errorf("curl with Host %s = %q; want %q", otherName, got, want)
		}
	})
	t.Run("denied path is 403 over TLS", func(t *testing.T) {
		before := sc.good.hits.Load()
		if got, want := sc.curl(t, sc.intercept, apiName, "--http1.1", "/private"), "Access denied 403"; got != want {
			t.Errorf("curl /private = %q; want %q", got, want)
		}
		// Decrypted paths are normalized before the rules see them: a
		// /../ cannot walk out of the allowed prefix.
		if got, want := sc.curl(t, sc.intercept, apiName, "--http1.1", "/public/../private", "--path-as-is"), "Access denied 403"; got != want {
			t.Errorf("curl --path-as-is /public/../private = %q; want %q", got, want)
		}
		if sc.good.hits.Load() != before {
			t.Error("the denied request reached the upstream")
		}
	})
	t.Run("flow records show the decrypted requests", func(t *testing.T) {
		// Records are written by the filter asynchronously.
		deadline := time.Now().Add(time.Minute)
		for {
			got := sc.flowRecords(t)
			if got["allowed GET /public/x sni="+apiName] && got["denied GET /private sni="+apiName] {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("flow records %v; want allowed GET /public/x and denied GET /private, intercepted, SNI %s", got, apiName)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	t.Run("untrusted upstream certificate fails", func(t *testing.T) {
		got := sc.curl(t, sc.untrusted, apiName, "--http1.1", "/public/x")
		if !strings.HasSuffix(got, " 503") {
			t.Errorf("curl through the untrusted upstream = %q; want 503", got)
		}
		if n := s.Stat(t, "cluster.api-untrusted.ssl.fail_verify_error"); n == 0 {
			t.Error("cluster.api-untrusted.ssl.fail_verify_error = 0; want the upstream certificate rejected")
		}
		if n := sc.rogue.hits.Load(); n != 0 {
			t.Errorf("the untrusted upstream served %d requests; want 0", n)
		}
	})
	t.Run("upstream certificate must name the client's SNI", func(t *testing.T) {
		// The upstream is trusted but its certificate names apiName only.
		got := sc.curl(t, sc.intercept, otherName, "--http1.1", "/public/x")
		if !strings.HasSuffix(got, " 503") {
			t.Errorf("curl %s = %q; want 503 (SAN mismatch)", otherName, got)
		}
		if n := s.Stat(t, "cluster.api.ssl.fail_verify_san"); n == 0 {
			t.Error("cluster.api.ssl.fail_verify_san = 0; want the upstream certificate rejected for its SAN")
		}
	})
	t.Run("SNI allowed passes through untouched", func(t *testing.T) {
		out, ok := sClient(t, sc.passthrough, "-servername", apiName, "-CAfile", p.publicCA, "-verify_return_error")
		if !ok || !strings.Contains(out, "Verify return code: 0 (ok)") {
			t.Fatalf("openssl s_client -servername %s: handshake failed:\n%s", apiName, out)
		}
		// The client sees the upstream's own certificate (issued by the
		// public CA), not an interception certificate.
		if crt := peerCert(t, out); crt.Issuer.CommonName != "public-ca" {
			t.Errorf("passthrough peer certificate issuer = %q; want public-ca", crt.Issuer.CommonName)
		}
	})
	t.Run("SNI denied", func(t *testing.T) {
		// "*.pass.ward.test" covers one label: a.pass.ward.test passes,
		// a.b.pass.ward.test does not (Cilium's matchPattern semantics).
		for _, tc := range []struct {
			sni     string
			allowed bool
		}{{"cilium.io", false}, {"a.pass.ward.test", true}, {"A.Pass.Ward.Test", true}, {"a.b.pass.ward.test", false}, {"pass.ward.test", false}} {
			if out, ok := sClient(t, sc.passthrough, "-servername", tc.sni); ok != tc.allowed {
				t.Errorf("openssl s_client -servername %s: handshake completed %v; want %v:\n%s", tc.sni, ok, tc.allowed, out)
			}
		}
	})
	t.Run("ClientHello without SNI refused", func(t *testing.T) {
		if out, ok := sClient(t, sc.passthrough, "-noservername"); ok {
			t.Errorf("openssl s_client -noservername on the SNI listener: handshake succeeded; want refused:\n%s", out)
		}
		if out, ok := sClient(t, sc.intercept, "-noservername"); ok {
			t.Errorf("openssl s_client -noservername on the interception listener: handshake succeeded; want refused:\n%s", out)
		}
	})
	t.Run("catch-all interception chain", func(t *testing.T) {
		// A chain without server names intercepts any SNI...
		if got, want := sc.curl(t, sc.any, apiName, "--http1.1", "/public/any"), "upstream /public/any sni="+apiName+" 200"; got != want {
			t.Errorf("curl via the catch-all chain = %q; want %q", got, want)
		}
		// ...but not a ClientHello without SNI: there would be no name to
		// verify the upstream against.
		if out, ok := sClient(t, sc.any, "-noservername"); ok {
			t.Errorf("openssl s_client -noservername on the catch-all chain: handshake succeeded; want refused:\n%s", out)
		}
	})
	t.Run("one copy of a secret used by two listeners", func(t *testing.T) {
		resp, err := http.Get("http://" + s.Admin + "/config_dump?resource=dynamic_active_secrets")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var dump struct {
			Configs []struct {
				Name string `json:"name"`
			} `json:"configs"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&dump); err != nil {
			t.Fatal(err)
		}
		count := map[string]int{}
		for _, c := range dump.Configs {
			count[c.Name]++
		}
		for _, n := range []string{sc.term.CertificateName(), sc.orig.TrustedCAName()} {
			if count[n] != 1 {
				t.Errorf("config_dump holds %d copies of secret %s; want 1 (all: %v)", count[n], n, count)
			}
		}
		// Listeners hold references only, and Envoy redacts the key.
		full, err := http.Get("http://" + s.Admin + "/config_dump")
		if err != nil {
			t.Fatal(err)
		}
		defer full.Body.Close()
		b, _ := io.ReadAll(full.Body)
		if strings.Contains(string(b), "PRIVATE KEY") {
			t.Error("config_dump shows private key material")
		}
		if n := strings.Count(string(b), "BEGIN CERTIFICATE"); n != 0 {
			// Secrets appear base64-encoded (inline_bytes), listeners and
			// clusters not at all: a PEM header in clear means inline TLS
			// material somewhere.
			t.Errorf("config_dump holds %d PEM certificates in clear; want SDS references only", n)
		}
	})
	t.Run("rotation via SDS keeps established connections", func(t *testing.T) {
		sc.rotation(t)
	})
}

// flowRecords reads the access log: "verdict METHOD path" of each egress
// HTTP record toward the api's identity.
func (sc *scenario) flowRecords(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(sc.flows)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		var r flow.Record
		if json.Unmarshal([]byte(line), &r) != nil || r.HTTP == nil || r.Direction != flow.Egress {
			continue
		}
		out[fmt.Sprintf("%s %s %s", r.Verdict, r.HTTP.Method, r.HTTP.Path)] = true
		if r.TLS != nil && r.TLS.Intercepted {
			out[fmt.Sprintf("%s %s %s sni=%s", r.Verdict, r.HTTP.Method, r.HTTP.Path, r.TLS.SNI)] = true
		}
	}
	return out
}

// resolveSecrets resolves every reference of the scenario's rules.
func (sc *scenario) resolveSecrets() ([]*tlsv3.Secret, error) {
	return sc.src.Resolve([]secrets.Request{
		{Ref: sc.term, Use: secrets.UseCertificate},
		{Ref: sc.orig, Use: secrets.UseTrustedCA},
		{Ref: sc.broken, Use: secrets.UseCertificate},
	})
}

// pushSecrets resolves the policy's references from the secrets directory
// and publishes them with the listeners and clusters.
func (sc *scenario) pushSecrets(t *testing.T) {
	t.Helper()
	sec, err := sc.resolveSecrets()
	for _, line := range strings.Split(fmt.Sprint(err), "\n") {
		if err != nil && !strings.Contains(line, sc.broken.String()) {
			t.Fatalf("Resolve: %v", err)
		}
	}
	res := sc.res
	res.Secrets = nil
	for _, x := range sec {
		res.Secrets = append(res.Secrets, x)
	}
	sc.s.PushEnvoy(t, res)
}

// curl requests https://name:port/path through Envoy, trusting only the
// internal CA, and returns the body and status code on one line.
func (sc *scenario) curl(t *testing.T, port uint32, name, proto, path string, extra ...string) string {
	t.Helper()
	args := append([]string{"-s", "--max-time", "20", "-w", " %{http_code}", proto}, extra...)
	args = append(args,
		"--cacert", sc.p.internalCA,
		"--resolve", fmt.Sprintf("%s:%d:127.0.0.1", name, port),
		fmt.Sprintf("https://%s:%d%s", name, port, path))
	out, err := exec.Command(testenv.RequireCommand(t, "curl"), args...).Output()
	if err != nil {
		t.Fatalf("curl %v: %v (%s)", args, err, out)
	}
	return strings.Join(strings.Fields(string(out)), " ")
}

// sClient runs openssl s_client against 127.0.0.1:port and reports whether
// the handshake completed.
func sClient(t *testing.T, port uint32, args ...string) (string, bool) {
	t.Helper()
	cmd := exec.Command(testenv.RequireCommand(t, "openssl"), append([]string{"s_client", "-connect", fmt.Sprintf("127.0.0.1:%d", port), "-showcerts"}, args...)...)
	cmd.Stdin = strings.NewReader("") // EOF right after the handshake
	out, err := cmd.CombinedOutput()
	s := string(out)
	return s, err == nil && strings.Contains(s, "BEGIN CERTIFICATE")
}

// peerCert parses the first certificate s_client printed.
func peerCert(t *testing.T, out string) *x509.Certificate {
	t.Helper()
	i := strings.Index(out, "-----BEGIN CERTIFICATE-----")
	if i < 0 {
		t.Fatalf("no certificate in:\n%s", out)
	}
	blk, _ := pem.Decode([]byte(out[i:]))
	if blk == nil {
		t.Fatalf("bad certificate in:\n%s", out)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// rotation opens a keep-alive connection, rotates the interception
// certificate in the secrets directory, publishes it by SDS, and checks
// that new handshakes get the new certificate while the established
// connection keeps serving requests.
func (sc *scenario) rotation(t *testing.T) {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(read(t, sc.p.internalCA))
	var conns atomic.Int64
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			conns.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", sc.intercept))
		},
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     10 * time.Minute,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: time.Minute}
	url := fmt.Sprintf("https://%s:%d/public/rotation", apiName, sc.intercept)
	get := func() (body string, reused bool, serial string) {
		t.Helper()
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
		})
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%s %d", b, resp.StatusCode), reused, resp.TLS.PeerCertificates[0].SerialNumber.String()
	}
	want := "upstream /public/rotation sni=" + apiName + " 200"
	body, _, oldSerial := get()
	if body != want {
		t.Fatalf("before rotation: %q; want %q", body, want)
	}

	// A new certificate and key for the same names, signed by the same
	// internal CA, written where the secret lives; the source notices.
	crt, key := newLeaf(t, sc.p.dir, "intercept-rotated", sc.p.internalCA, sc.p.internalCAKey, apiName, otherName)
	if err := secrets.Write(sc.secretsDir, sc.term, map[string][]byte{"tls.crt": read(t, crt), "tls.key": read(t, key)}); err != nil {
		t.Fatal(err)
	}
	if changed, err := sc.src.Reload(); err != nil || !changed {
		t.Fatalf("Reload after rotation = %v, %v; want true, nil", changed, err)
	}
	sc.pushSecrets(t)
	newSerial := leafSerial(t, crt)
	// SDS is applied asynchronously to the ACK of the listeners: wait for
	// Envoy to ack the secrets, then for a fresh handshake to show them.
	deadline := time.Now().Add(time.Minute)
	for sc.s.XDS.Acked(resource.SecretType) != sc.s.XDS.Acked(resource.ListenerType) {
		if time.Now().After(deadline) {
			t.Fatal("Envoy did not ack the rotated secret")
		}
		time.Sleep(50 * time.Millisecond)
	}
	var seen string
	for {
		out, ok := sClient(t, sc.intercept, "-servername", apiName)
		if ok {
			if seen = peerCert(t, out).SerialNumber.String(); seen == newSerial {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("new handshakes still present serial %s; want the rotated %s", seen, newSerial)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// New connections with curl see the new certificate and work.
	if got := sc.curl(t, sc.intercept, apiName, "--http1.1", "/public/rotation"); got != want {
		t.Errorf("curl after rotation = %q; want %q", got, want)
	}
	// The established connection was not dropped: same connection, still
	// the old certificate, request served.
	before := conns.Load()
	body, reused, serial := get()
	if body != want || !reused || conns.Load() != before {
		t.Errorf("keep-alive request after rotation: %q reused=%v new dials=%d; want %q on the established connection", body, reused, conns.Load()-before, want)
	}
	if serial != oldSerial {
		t.Errorf("established connection's certificate serial = %s; want the old %s", serial, oldSerial)
	}
}

func leafSerial(t *testing.T, path string) string {
	t.Helper()
	blk, _ := pem.Decode(read(t, path))
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.String()
}

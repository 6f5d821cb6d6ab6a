package secrets

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/wardproxy/ward/policy"
)

type pemPair struct{ crt, key []byte }

// issue makes a self-signed certificate for name valid in [from, to).
func issue(t *testing.T, name string, from, to time.Time) pemPair {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    from,
		NotAfter:     to,
		IsCA:         true,
		KeyUsage:     x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pemPair{
		crt: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		key: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}),
	}
}

func TestResolve(t *testing.T) {
	now := time.Now()
	good := issue(t, "good.example", now.Add(-time.Hour), now.Add(time.Hour))
	other := issue(t, "other.example", now.Add(-time.Hour), now.Add(time.Hour))
	expired := issue(t, "old.example", now.Add(-2*time.Hour), now.Add(-time.Hour))
	dir := t.TempDir()
	write := func(ns, name string, keys map[string][]byte) {
		t.Helper()
		if err := Write(dir, Ref{Namespace: ns, Name: name}, keys); err != nil {
			t.Fatal(err)
		}
	}
	write("kube-system", "good", map[string][]byte{"tls.crt": good.crt, "tls.key": good.key, "ca.crt": append(append([]byte{}, good.crt...), other.crt...)})
	write("kube-system", "custom", map[string][]byte{"my.crt": good.crt, "my.key": good.key})
	write("kube-system", "mismatch", map[string][]byte{"tls.crt": good.crt, "tls.key": other.key})
	write("kube-system", "expired", map[string][]byte{"tls.crt": expired.crt, "tls.key": expired.key})
	write("kube-system", "garbage-ca", map[string][]byte{"ca.crt": append(append([]byte{}, good.crt...), "not a certificate\n"...)})
	write("kube-system", "key-as-ca", map[string][]byte{"ca.crt": good.key})
	write("other", "good", map[string][]byte{"tls.crt": good.crt, "tls.key": good.key})

	s, err := New(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ks := func(name string) Ref { return Ref{Namespace: "kube-system", Name: name} }
	for _, tc := range []struct {
		name    string
		reqs    []Request
		want    []string // SDS names
		wantErr string   // substring; "" for none
	}{
		{name: "certificate and CA", reqs: []Request{{Ref: ks("good"), Use: UseCertificate | UseTrustedCA}}, want: []string{"kube-system/good", "kube-system/good:ca.crt"}},
		{name: "one copy for two rules", reqs: []Request{{Ref: ks("good"), Use: UseCertificate}, {Ref: ks("good"), Use: UseCertificate}}, want: []string{"kube-system/good"}},
		{name: "custom keys", reqs: []Request{{Ref: Ref{Namespace: "kube-system", Name: "custom", Certificate: "my.crt", PrivateKey: "my.key"}, Use: UseCertificate}}, want: []string{"kube-system/custom:my.crt,my.key"}},
		{name: "missing secret", reqs: []Request{{Ref: ks("nope"), Use: UseCertificate}}, wantErr: "secret kube-system/nope: secret not found"},
		{name: "missing key", reqs: []Request{{Ref: ks("garbage-ca"), Use: UseCertificate}}, wantErr: "secret kube-system/garbage-ca: key tls.crt"},
		{name: "key does not match", reqs: []Request{{Ref: ks("mismatch"), Use: UseCertificate}}, wantErr: "secret kube-system/mismatch (tls.crt, tls.key): certificate and key"},
		{name: "expired", reqs: []Request{{Ref: ks("expired"), Use: UseCertificate}}, wantErr: "secret kube-system/expired (tls.crt, tls.key): certificate \"old.example\" expired"},
		{name: "garbage CA", reqs: []Request{{Ref: ks("garbage-ca"), Use: UseTrustedCA}}, wantErr: "secret kube-system/garbage-ca (ca.crt): CA bundle"},
		{name: "key as CA", reqs: []Request{{Ref: ks("key-as-ca"), Use: UseTrustedCA}}, wantErr: "not CERTIFICATE"},
		{name: "bad one does not hide good one", reqs: []Request{{Ref: ks("mismatch"), Use: UseCertificate}, {Ref: ks("good"), Use: UseCertificate}}, want: []string{"kube-system/good"}, wantErr: "kube-system/mismatch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Resolve(tc.reqs)
			var names []string
			for _, g := range got {
				names = append(names, g.GetName())
			}
			if strings.Join(names, " ") != strings.Join(tc.want, " ") {
				t.Errorf("Resolve names = %v; want %v", names, tc.want)
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Resolve error = %v; want none", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Resolve error = %v; want one containing %q", err, tc.wantErr)
			}
			if err != nil {
				for _, p := range []pemPair{good, other, expired} {
					if strings.Contains(err.Error(), string(p.key[40:80])) {
						t.Errorf("error quotes key material: %v", err)
					}
				}
			}
		})
	}

	ns, err := New(Config{Dir: dir, Namespace: "kube-system"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ns.Resolve([]Request{{Ref: Ref{Namespace: "other", Name: "good"}, Use: UseCertificate}}); !errors.Is(err, ErrNamespace) {
		t.Errorf("Resolve outside the secrets namespace: %v; want ErrNamespace", err)
	}
}

func TestWritePermissions(t *testing.T) {
	dir := t.TempDir()
	if err := Write(dir, Ref{Namespace: "ns", Name: "n"}, map[string][]byte{"tls.key": []byte("k")}); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{
		filepath.Join(dir, "ns", "n"):            0o700,
		filepath.Join(dir, "ns", "n", "tls.key"): 0o600,
	} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("mode of %s = %v; want %v", p, got, want)
		}
	}
	for _, bad := range []Ref{{Namespace: "..", Name: "x"}, {Namespace: "a/b", Name: "x"}, {Name: "x"}} {
		if err := Write(dir, bad, nil); err == nil {
			t.Errorf("Write(%v) succeeded; want an error", bad)
		}
	}
}

func TestRunReloadsOnChange(t *testing.T) {
	now := time.Now()
	a := issue(t, "a.example", now.Add(-time.Hour), now.Add(time.Hour))
	b := issue(t, "b.example", now.Add(-time.Hour), now.Add(time.Hour))
	dir := t.TempDir()
	ref := Ref{Namespace: "ns", Name: "n"}
	if err := Write(dir, ref, map[string][]byte{"tls.crt": a.crt, "tls.key": a.key}); err != nil {
		t.Fatal(err)
	}
	changed := make(chan struct{}, 16)
	s, err := New(Config{Dir: dir, Interval: 10 * time.Millisecond, OnChange: func() { changed <- struct{}{} }})
	if err != nil {
		t.Fatal(err)
	}
	if again, err := s.Reload(); err != nil || again {
		t.Fatalf("Reload without change = %v, %v; want false, nil", again, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()

	if err := Write(dir, ref, map[string][]byte{"tls.crt": b.crt, "tls.key": b.key}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(time.Minute):
		t.Fatal("no OnChange after rewriting the secret")
	}
	got, err := s.Resolve([]Request{{Ref: ref, Use: UseCertificate}})
	if err != nil {
		t.Fatal(err)
	}
	if c := got[0].GetTlsCertificate().GetCertificateChain().GetInlineBytes(); string(c) != string(b.crt) {
		t.Errorf("after rotation the secret holds the old certificate")
	}
}

func TestNewMissingDir(t *testing.T) {
	if _, err := New(Config{Dir: filepath.Join(t.TempDir(), "absent")}); err == nil {
		t.Error("New on a missing directory succeeded; want an error")
	}
}

func TestRefFor(t *testing.T) {
	got, ok := RefFor(&policy.TLSContext{Secret: &policy.Secret{Namespace: "kube-system", Name: "httpbin-tls-data"}, TrustedCA: "bundle.pem"})
	if !ok || got.CertificateName() != "kube-system/httpbin-tls-data" || got.TrustedCAName() != "kube-system/httpbin-tls-data:bundle.pem" {
		t.Errorf("RefFor = %+v (%s, %s), %v", got, got.CertificateName(), got.TrustedCAName(), ok)
	}
	if _, ok := RefFor(nil); ok {
		t.Error("RefFor(nil) ok; want false")
	}
}

func TestResolveKeepsLastValidVersion(t *testing.T) {
	now := time.Now()
	a := issue(t, "a.example", now.Add(-time.Hour), now.Add(time.Hour))
	b := issue(t, "b.example", now.Add(-time.Hour), now.Add(2*time.Hour))
	dir := t.TempDir()
	ref := Ref{Namespace: "ns", Name: "n"}
	req := []Request{{Ref: ref, Use: UseCertificate}}
	if err := Write(dir, ref, map[string][]byte{"tls.crt": a.crt, "tls.key": a.key}); err != nil {
		t.Fatal(err)
	}
	clock := now
	s, err := New(Config{Dir: dir, Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	cert := func(got []*tlsv3.Secret) string {
		if len(got) != 1 {
			return fmt.Sprintf("%d secrets", len(got))
		}
		return string(got[0].GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	}
	if got, err := s.Resolve(req); err != nil || cert(got) != string(a.crt) {
		t.Fatalf("Resolve = %v; want a's certificate", err)
	}
	// A rotation caught half-way: b's certificate, a's key.
	if err := Write(dir, ref, map[string][]byte{"tls.crt": b.crt}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	got, err := s.Resolve(req)
	if err == nil || !strings.Contains(err.Error(), "serving the last valid version") || cert(got) != string(a.crt) {
		t.Errorf("Resolve mid-rotation = %q, %v; want a's certificate and an error saying so", cert(got), err)
	}
	// Once a's certificate expired, it is not served any more.
	clock = now.Add(90 * time.Minute)
	if got, err := s.Resolve(req); err == nil || len(got) != 0 {
		t.Errorf("Resolve with the last valid version expired = %d secrets, %v; want none and an error", len(got), err)
	}
	clock = now
	// The rotation completes.
	if err := Write(dir, ref, map[string][]byte{"tls.key": b.key}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Resolve(req); err != nil || cert(got) != string(b.crt) {
		t.Errorf("Resolve after rotation = %v; want b's certificate", err)
	}
}

// TestValue: a headerMatches secret is a secret of exactly one item (any
// key name), as Cilium's GetSecretString; a missing one, one of several
// items and one outside the secrets namespace are errors naming it.
func TestValue(t *testing.T) {
	dir := t.TempDir()
	for ref, keys := range map[Ref]map[string][]byte{
		{Namespace: "sw", Name: "tok"}:  {"token": []byte("s3cr3t")},
		{Namespace: "sw", Name: "two"}:  {"a": []byte("1"), "b": []byte("2")},
		{Namespace: "kv", Name: "tok2"}: {"x": []byte("other")},
	} {
		if err := Write(dir, ref, keys); err != nil {
			t.Fatal(err)
		}
	}
	s, err := New(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := s.Value("sw", "tok"); err != nil || v != "s3cr3t" {
		t.Errorf("Value(sw/tok) = %q, %v; want s3cr3t", v, err)
	}
	for _, c := range []struct{ ns, name, want string }{
		{"sw", "two", "exactly one item"},
		{"sw", "none", "not found"},
	} {
		if _, err := s.Value(c.ns, c.name); err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.ns+"/"+c.name) {
			t.Errorf("Value(%s/%s) = %v; want an error naming it: %s", c.ns, c.name, err, c.want)
		}
	}
	ns, err := New(Config{Dir: dir, Namespace: "sw"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ns.Value("kv", "tok2"); !errors.Is(err, ErrNamespace) {
		t.Errorf("Value outside the secrets namespace = %v; want ErrNamespace", err)
	}
}

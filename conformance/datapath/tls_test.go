package datapath

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cdns "github.com/wardproxy/ward/conformance/dns"
	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/internal/testenv"
	"github.com/wardproxy/ward/secrets"
)

// The seed's "Inspecting TLS Encrypted Connections" on a node run by the
// agent: the client's HTTPS to a server outside the cluster is intercepted
// on 443 (terminatingTLS with an internal-CA certificate, HTTP rules on the
// decrypted requests, originatingTLS toward the server verified against the
// "public" CA), 8443 is a serverNames-only rule (pass-through), and on 9443
// the client's plain HTTP goes to the server over TLS (originatingTLS
// alone).
const tlsPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: tls-intercept
spec:
  endpointSelector:
    matchLabels: {app: client}
  egress:
  - toCIDR: [%[1]s/32]
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
      terminatingTLS:
        secret: {namespace: ward-secrets, name: api-intercept}
      originatingTLS:
        secret: {namespace: ward-secrets, name: public-cas}
      rules:
        http:
        - method: GET
          path: "/public.*"
  - toCIDR: [%[1]s/32]
    toPorts:
    - ports: [{port: "8443", protocol: TCP}]
      serverNames: [pass.ward.test]
  - toCIDR: [%[1]s/32]
    toPorts:
    - ports: [{port: "9443", protocol: TCP}]
      originatingTLS:
        secret: {namespace: ward-secrets, name: public-cas}
      rules:
        http:
        - method: GET
          path: "/public.*"
`

// tlsOpenssl runs the openssl binary in dir (certificates made as the
// seed's tutorial makes them).
func tlsOpenssl(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command(testenv.RequireCommand(t, "openssl"), args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// tlsCA makes a CA key and self-signed certificate; tlsLeaf a key and a
// certificate for names signed by a CA. Both return PEM file paths.
func tlsCA(t *testing.T, dir, name string) (crt, key string) {
	tlsOpenssl(t, dir, "genrsa", "-out", name+".key", "2048")
	tlsOpenssl(t, dir, "req", "-x509", "-new", "-nodes", "-key", name+".key", "-sha256", "-days", "2", "-subj", "/CN="+name, "-out", name+".crt")
	return filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
}

func tlsLeaf(t *testing.T, dir, name, caCrt, caKey string, names ...string) (crt, key []byte) {
	tlsOpenssl(t, dir, "genrsa", "-out", name+".key", "2048")
	tlsOpenssl(t, dir, "req", "-new", "-key", name+".key", "-subj", "/CN="+names[0], "-out", name+".csr")
	if err := os.WriteFile(filepath.Join(dir, name+".ext"), []byte("subjectAltName=DNS:"+strings.Join(names, ",DNS:")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tlsOpenssl(t, dir, "x509", "-req", "-in", name+".csr", "-CA", caCrt, "-CAkey", caKey, "-CAcreateserial", "-out", name+".crt", "-days", "2", "-sha256", "-extfile", name+".ext")
	return readFile(t, filepath.Join(dir, name+".crt")), readFile(t, filepath.Join(dir, name+".key"))
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// peerCertificate parses the first certificate openssl s_client printed.
func peerCertificate(out string) (*x509.Certificate, bool) {
	i := strings.Index(out, "-----BEGIN CERTIFICATE-----")
	if i < 0 {
		return nil, false
	}
	blk, _ := pem.Decode([]byte(out[i:]))
	if blk == nil {
		return nil, false
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	return c, err == nil
}

func serial(t *testing.T, crtPEM []byte) string {
	t.Helper()
	blk, _ := pem.Decode(crtPEM)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.String()
}

// serveTLS runs a Go HTTPS server on 443, 8443 and 9443 in pod, answering with
// the path and the SNI it saw.
func serveTLS(t *testing.T, pod *netns.Pod, crt, key []byte) {
	t.Helper()
	pair, err := tls.X509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	for _, port := range []string{":443", ":8443", ":9443"} {
		ln, err := pod.Listen("tcp", port)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/public/proto" {
					fmt.Fprint(w, r.Proto)
					return
				}
				fmt.Fprintf(w, "%s %s sni=%s", pod.Name, r.URL.Path, r.TLS.ServerName)
			}),
			ErrorLog: log.New(io.Discard, "", 0), // refused handshakes are expected
		}
		go srv.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{pair}, NextProtos: []string{"h2", "http/1.1"}}))
		t.Cleanup(func() { srv.Close() })
	}
}

// sClient runs openssl s_client in pod from against ip:port with sni and
// returns the certificate it was shown, nil when the handshake failed.
func sClient(ctx context.Context, n *node.Node, from string, ip netip.Addr, port, sni string) *x509.Certificate {
	out, _ := n.Pods[from].Run(ctx, "sh", "-c", fmt.Sprintf("openssl s_client -connect %s:%s -servername %s -showcerts </dev/null 2>&1", ip, port, sni))
	crt, ok := peerCertificate(out)
	if !ok {
		return nil
	}
	return crt
}

// TestWarddTLS: TLS interception and serverNames through the agent, with
// curl and openssl s_client in the client pod against a real Go TLS server
// in a "world" pod (not an endpoint of the node).
func TestWarddTLS(t *testing.T) {
	testenv.RequireCommand(t, "openssl")
	n := node.New(t,
		node.PodSpec{Name: "client", Labels: map[string]string{"app": "client"}},
		node.PodSpec{Name: "world", Labels: map[string]string{"app": "world"}, Unmanaged: true})
	world := n.Pods["world"]

	pki := t.TempDir()
	internalCA, internalKey := tlsCA(t, pki, "ward-internal-ca")
	publicCA, publicKey := tlsCA(t, pki, "public-ca")
	interceptCrt, interceptKey := tlsLeaf(t, pki, "intercept", internalCA, internalKey, "api.ward.test")
	serverCrt, serverKey := tlsLeaf(t, pki, "server", publicCA, publicKey, "api.ward.test", "pass.ward.test", "other.ward.test")
	serveTLS(t, world, serverCrt, serverKey)

	// The secrets directory as an operator fills it: the interception
	// certificate and the CAs trusted toward upstreams.
	term, orig := secrets.Ref{Namespace: "ward-secrets", Name: "api-intercept"}, secrets.Ref{Namespace: "ward-secrets", Name: "public-cas"}
	n.Config.SecretsDir = t.TempDir()
	if err := secrets.Write(n.Config.SecretsDir, term, map[string][]byte{"tls.crt": interceptCrt, "tls.key": interceptKey}); err != nil {
		t.Fatal(err)
	}
	if err := secrets.Write(n.Config.SecretsDir, orig, map[string][]byte{"ca.crt": readFile(t, publicCA)}); err != nil {
		t.Fatal(err)
	}
	n.Config.Datapath.TLSIngressPort, n.Config.Datapath.EgressTLSBasePort = uint16(node.FreePort(t)), uint16(node.FreePort(t))
	n.WritePolicy(t, "tls.yaml", fmt.Sprintf(tlsPolicy, world.IP))
	n.Start(t, 29700, 9297)

	c, stop := context.WithTimeout(context.Background(), 4*time.Minute)
	defer stop()
	curl := func(path string) string {
		return n.Curl(c, "client", "-w", " %{http_code}", "--cacert", internalCA,
			"--resolve", "api.ward.test:443:"+world.IP.String(), "https://api.ward.test"+path)
	}
	sClient := func(port, sni string) *x509.Certificate { return sClient(c, n, "client", world.IP, port, sni) }
	node.Eventually(t, "the intercepted GET /public/x to pass", func() bool {
		return curl("/public/x") == "world /public/x sni=api.ward.test 200"
	})
	t.Run("HTTP rules on the decrypted requests", func(t *testing.T) {
		if got := curl("/private"); got != "Access denied 403" {
			t.Errorf("curl https://api.ward.test/private = %q; want Access denied 403", got)
		}
	})
	t.Run("upstream protocol by ALPN", func(t *testing.T) {
		// The server offers h2: an h2 client (gRPC's transport) reaches
		// it as h2, as does an HTTP/1.1 client.
		for _, v := range []string{"--http2", "--http1.1"} {
			got := n.Curl(c, "client", v, "-w", " %{http_code}", "--cacert", internalCA,
				"--resolve", "api.ward.test:443:"+world.IP.String(), "https://api.ward.test/public/proto")
			if got != "HTTP/2.0 200" {
				t.Errorf("curl %s /public/proto = %q; want HTTP/2.0 200 (the protocol the server picked by ALPN)", v, got)
			}
		}
	})
	t.Run("the policy's certificate is presented", func(t *testing.T) {
		crt := sClient("443", "api.ward.test")
		if crt == nil || crt.Issuer.CommonName != "ward-internal-ca" || crt.SerialNumber.String() != serial(t, interceptCrt) {
			t.Errorf("s_client :443 api.ward.test certificate = %v; want the terminatingTLS secret's", crt)
		}
	})
	t.Run("serverNames pass-through", func(t *testing.T) {
		if crt := sClient("8443", "pass.ward.test"); crt == nil || crt.Issuer.CommonName != "public-ca" || crt.SerialNumber.String() != serial(t, serverCrt) {
			t.Errorf("s_client :8443 pass.ward.test certificate = %v; want the server's own", crt)
		}
		if crt := sClient("8443", "other.ward.test"); crt != nil {
			t.Errorf("s_client :8443 other.ward.test: handshake completed (issuer %s); want refused", crt.Issuer.CommonName)
		}
	})
	t.Run("plain HTTP sent over TLS", func(t *testing.T) {
		plain := func(path string) string {
			return n.Curl(c, "client", "-w", " %{http_code}", "--resolve", "api.ward.test:9443:"+world.IP.String(), "http://api.ward.test:9443"+path)
		}
		if got := plain("/public/z"); got != "world /public/z sni=api.ward.test 200" {
			t.Errorf("curl http://api.ward.test:9443/public/z = %q; want the world server's answer over TLS with SNI api.ward.test", got)
		}
		if got := plain("/private"); got != "Access denied 403" {
			t.Errorf("curl http://api.ward.test:9443/private = %q; want Access denied 403", got)
		}
	})
	t.Run("rotation", func(t *testing.T) {
		// A keep-alive connection from the client pod, established before
		// the rotation.
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(readFile(t, internalCA))
		var dials atomic.Int64
		tr := &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				dials.Add(1)
				return n.Pods["client"].Dial(ctx, network, netip.AddrPortFrom(world.IP, 443).String())
			},
			MaxIdleConnsPerHost: 1,
			IdleConnTimeout:     10 * time.Minute,
		}
		defer tr.CloseIdleConnections()
		get := func() (string, string) {
			t.Helper()
			req, _ := http.NewRequestWithContext(c, "GET", "https://api.ward.test/public/keepalive", nil)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatalf("GET over the keep-alive connection: %v", err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return fmt.Sprintf("%s %d", b, resp.StatusCode), resp.TLS.PeerCertificates[0].SerialNumber.String()
		}
		body, before := get()
		if body != "world /public/keepalive sni=api.ward.test 200" || before != serial(t, interceptCrt) {
			t.Fatalf("before rotation: %q, certificate serial %s; want 200 and the first certificate", body, before)
		}
		crt, key := tlsLeaf(t, pki, "intercept-rotated", internalCA, internalKey, "api.ward.test")
		if err := secrets.Write(n.Config.SecretsDir, term, map[string][]byte{"tls.crt": crt, "tls.key": key}); err != nil {
			t.Fatal(err)
		}
		want := serial(t, crt)
		node.Eventually(t, "new handshakes to present the rotated certificate", func() bool {
			got := sClient("443", "api.ward.test")
			return got != nil && got.SerialNumber.String() == want
		})
		if got := curl("/public/y"); got != "world /public/y sni=api.ward.test 200" {
			t.Errorf("curl after rotation = %q; want 200 from the world server", got)
		}
		// The established connection was not drained: same connection,
		// still the old certificate.
		if body, after := get(); body != "world /public/keepalive sni=api.ward.test 200" || after != before || dials.Load() != 1 {
			t.Errorf("keep-alive request after rotation: %q, serial %s, %d dials; want 200 on the first connection (serial %s, 1 dial)", body, after, dials.Load(), before)
		}
	})
	t.Run("a removed secret fails its rule closed, the others keep working", func(t *testing.T) {
		if err := os.RemoveAll(filepath.Join(n.Config.SecretsDir, term.Namespace, term.Name)); err != nil {
			t.Fatal(err)
		}
		node.Eventually(t, "the interception rule to be left out", func() bool { return sClient("443", "api.ward.test") == nil })
		if crt := sClient("8443", "pass.ward.test"); crt == nil || crt.SerialNumber.String() != serial(t, serverCrt) {
			t.Errorf("s_client :8443 pass.ward.test certificate = %v; want the server's own (pass-through unaffected)", crt)
		}
		if got := n.Curl(c, "client", "-w", " %{http_code}", "--resolve", "api.ward.test:9443:"+world.IP.String(), "http://api.ward.test:9443/public/z"); got != "world /public/z sni=api.ward.test 200" {
			t.Errorf("curl http://api.ward.test:9443/public/z = %q; want 200 (its secret is still there)", got)
		}
	})
}

const tlsIngressPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: tls-ingress
spec:
  endpointSelector:
    matchLabels: {app: api}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: client}
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
      terminatingTLS:
        secret: {name: api-intercept}
      originatingTLS:
        secret: {name: public-cas}
      rules:
        http:
        - method: GET
          path: "/public.*"
  - fromEndpoints:
    - matchLabels: {app: client}
    toPorts:
    - ports: [{port: "8443", protocol: TCP}]
      serverNames: [pass.ward.test]
  - fromEndpoints:
    - matchLabels: {app: client}
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      terminatingTLS:
        secret: {name: api-intercept}
      rules:
        http:
        - method: GET
          path: "/public.*"
`

// tlsPKI is what apiTLSNode made: the internal CA clients trust (a PEM
// file) and the two certificates (PEM).
type tlsPKI struct {
	internalCA              string
	interceptCrt, serverCrt []byte
}

// apiTLSNode is a node with the api and client pods, the seed's
// certificates (an internal CA's interception certificate for
// api.ward.test, the server's own from a "public" CA), the api's Go TLS
// servers (serveTLS) and the secrets directory as an operator fills it
// (default/api-intercept, default/public-cas).
func apiTLSNode(t *testing.T) (*node.Node, tlsPKI) {
	t.Helper()
	testenv.RequireCommand(t, "openssl")
	n := node.New(t,
		node.PodSpec{Name: "api", Labels: map[string]string{"app": "api"}},
		node.PodSpec{Name: "client", Labels: map[string]string{"app": "client"}})
	api := n.Pods["api"]
	pki := t.TempDir()
	internalCA, internalKey := tlsCA(t, pki, "ward-internal-ca")
	publicCA, publicKey := tlsCA(t, pki, "public-ca")
	interceptCrt, interceptKey := tlsLeaf(t, pki, "intercept", internalCA, internalKey, "api.ward.test")
	serverCrt, serverKey := tlsLeaf(t, pki, "server", publicCA, publicKey, "api.ward.test", "pass.ward.test", "other.ward.test")
	serveTLS(t, api, serverCrt, serverKey)
	n.Config.SecretsDir = t.TempDir()
	if err := secrets.Write(n.Config.SecretsDir, secrets.Ref{Namespace: "default", Name: "api-intercept"}, map[string][]byte{"tls.crt": interceptCrt, "tls.key": interceptKey}); err != nil {
		t.Fatal(err)
	}
	if err := secrets.Write(n.Config.SecretsDir, secrets.Ref{Namespace: "default", Name: "public-cas"}, map[string][]byte{"ca.crt": readFile(t, publicCA)}); err != nil {
		t.Fatal(err)
	}
	n.Config.Datapath.TLSIngressPort, n.Config.Datapath.EgressTLSBasePort = uint16(node.FreePort(t)), uint16(node.FreePort(t))
	return n, tlsPKI{internalCA: internalCA, interceptCrt: interceptCrt, serverCrt: serverCrt}
}

// TestWarddTLSIngress: the same rules on the server's ingress (the
// secrets in the policy's namespace): the shared ingress TLS listener
// intercepts 443 for the api pod, passes 8443 through by SNI, and
// terminates TLS for the pod's plain HTTP server on 8080 (terminatingTLS
// alone).
func TestWarddTLSIngress(t *testing.T) {
	n, pki := apiTLSNode(t)
	api := n.Pods["api"]
	n.Serve(t, "api", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "plain %s tls=%v", r.URL.Path, r.TLS != nil)
	}), ":8080")
	n.WritePolicy(t, "tls.yaml", tlsIngressPolicy)
	n.Start(t, 29800, 9298)

	c, stop := context.WithTimeout(context.Background(), 4*time.Minute)
	defer stop()
	curl := func(path string) string {
		return n.Curl(c, "client", "-w", " %{http_code}", "--cacert", pki.internalCA,
			"--resolve", "api.ward.test:443:"+api.IP.String(), "https://api.ward.test"+path)
	}
	node.Eventually(t, "the intercepted GET /public/x to pass", func() bool {
		return curl("/public/x") == "api /public/x sni=api.ward.test 200"
	})
	if got := curl("/private"); got != "Access denied 403" {
		t.Errorf("curl https://api.ward.test/private = %q; want Access denied 403", got)
	}
	if crt := sClient(c, n, "client", api.IP, "443", "api.ward.test"); crt == nil || crt.SerialNumber.String() != serial(t, pki.interceptCrt) {
		t.Errorf("s_client :443 api.ward.test certificate = %v; want the terminatingTLS secret's", crt)
	}
	for path, want := range map[string]string{"/public/t": "plain /public/t tls=false 200", "/private": "Access denied 403"} {
		got := n.Curl(c, "client", "-w", " %{http_code}", "--cacert", pki.internalCA,
			"--resolve", "api.ward.test:8080:"+api.IP.String(), "https://api.ward.test:8080"+path)
		if got != want {
			t.Errorf("curl https://api.ward.test:8080%s = %q; want %q (TLS terminated by Envoy, plain HTTP to the pod)", path, got, want)
		}
	}
	if crt := sClient(c, n, "client", api.IP, "8443", "pass.ward.test"); crt == nil || crt.SerialNumber.String() != serial(t, pki.serverCrt) {
		t.Errorf("s_client :8443 pass.ward.test certificate = %v; want the server's own", crt)
	}
	if crt := sClient(c, n, "client", api.IP, "8443", "other.ward.test"); crt != nil {
		t.Errorf("s_client :8443 other.ward.test: handshake completed (issuer %s); want refused", crt.Issuer.CommonName)
	}
}

// The seed's tutorial policy itself: TLS interception of the mediabot's
// HTTPS to a name allowed by toFQDNs, every request allowed and seen at
// L7 (http: [{}]), DNS through the DNS proxy.
const tlsFQDNPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: l7-visibility-tls
spec:
  endpointSelector:
    matchLabels: {class: mediabot, org: empire}
  egress:
  - toFQDNs:
    - matchName: httpbin.ward.test
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
      terminatingTLS:
        secret: {namespace: kube-system, name: httpbin-tls-data}
      originatingTLS:
        secret: {namespace: kube-system, name: tls-orig-data}
      rules:
        http: [{}]
  - toEndpoints:
    - matchLabels: {k8s-app: kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*"}]
`

// TestWarddTLSFQDN plays the seed's "Inspecting TLS Encrypted Connections"
// through wardd: dig httpbin.ward.test in the mediabot pod (the DNS proxy
// gives the answer's address the toFQDNs identity), then curl
// https://httpbin.ward.test trusting the internal CA: Envoy presents the
// policy's certificate and the request reaches the real server, verified
// against the "public" CA.
func TestWarddTLSFQDN(t *testing.T) {
	testenv.RequireCommand(t, "openssl")
	testenv.RequireCommand(t, "dig")
	n := node.New(t,
		node.PodSpec{Name: "kube-dns", Labels: map[string]string{"k8s-app": "kube-dns"}},
		node.PodSpec{Name: "mediabot", Labels: map[string]string{"class": "mediabot", "org": "empire"}},
		node.PodSpec{Name: "httpbin", Labels: map[string]string{"app": "httpbin"}, Unmanaged: true})
	hb, kd := n.Pods["httpbin"], n.Pods["kube-dns"]
	pki := t.TempDir()
	internalCA, internalKey := tlsCA(t, pki, "myCA")
	publicCA, publicKey := tlsCA(t, pki, "public-ca")
	interceptCrt, interceptKey := tlsLeaf(t, pki, "internal-httpbin", internalCA, internalKey, "httpbin.ward.test")
	serverCrt, serverKey := tlsLeaf(t, pki, "server", publicCA, publicKey, "httpbin.ward.test")
	serveTLS(t, hb, serverCrt, serverKey)
	cdns.StartUnbound(t, cdns.Zone{Origin: "ward.test.", Body: `@ IN SOA ns.ward.test. admin.ward.test. 1 3600 600 86400 60
@ IN NS ns.ward.test.
ns IN A 192.0.2.53
httpbin IN A ` + hb.IP.String() + `
`}, cdns.UnboundConfig{Addr: netip.AddrPortFrom(kd.IP, 53), Wrap: []string{"ip", "netns", "exec", kd.NetNS}})
	n.Config.SecretsDir = t.TempDir()
	if err := secrets.Write(n.Config.SecretsDir, secrets.Ref{Namespace: "kube-system", Name: "httpbin-tls-data"}, map[string][]byte{"tls.crt": interceptCrt, "tls.key": interceptKey}); err != nil {
		t.Fatal(err)
	}
	if err := secrets.Write(n.Config.SecretsDir, secrets.Ref{Namespace: "kube-system", Name: "tls-orig-data"}, map[string][]byte{"ca.crt": readFile(t, publicCA)}); err != nil {
		t.Fatal(err)
	}
	n.Config.Datapath.TLSIngressPort, n.Config.Datapath.EgressTLSBasePort = uint16(node.FreePort(t)), uint16(node.FreePort(t))
	n.WritePolicy(t, "tls.yaml", tlsFQDNPolicy)
	n.Start(t, 29600, 9296)

	c, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	curl := func() string {
		return n.Curl(c, "mediabot", "-w", " %{http_code}", "--cacert", internalCA,
			"--resolve", "httpbin.ward.test:443:"+hb.IP.String(), "https://httpbin.ward.test/anything")
	}
	if got := curl(); got != "error" {
		t.Errorf("before resolution: curl https://httpbin.ward.test = %q; want dropped (no toFQDNs address yet)", got)
	}
	node.Eventually(t, "the DNS proxy to answer for httpbin.ward.test", func() bool {
		out, _ := n.Pods["mediabot"].Run(c, "dig", "@"+kd.IP.String(), "+tries=1", "+time=2", "httpbin.ward.test.")
		r := cdns.ParseDig(out)
		return r.Status == "NOERROR" && len(r.IPs()) == 1
	})
	if got := curl(); got != "httpbin /anything sni=httpbin.ward.test 200" {
		t.Errorf("after resolution: curl https://httpbin.ward.test/anything = %q; want the server's answer through the interception", got)
	}
	if crt := sClient(c, n, "mediabot", hb.IP, "443", "httpbin.ward.test"); crt == nil || crt.SerialNumber.String() != serial(t, interceptCrt) {
		t.Errorf("s_client httpbin.ward.test:443 certificate = %v; want the policy's internal-httpbin certificate", crt)
	}
}

// TestWarddTLSEgressAndIngress: the client intercepts its own HTTPS
// (egress terminatingTLS/originatingTLS, HTTP rules) to the api pod on the
// same node, which has ingress HTTP rules on the same port. The egress
// listener's upstream goes straight to the pod (one proxy on the path, not
// two), so ward.http on the egress chain applies the api's ingress rules
// too. Before, every such request was dropped at the api pod's veth.
func TestWarddTLSEgressAndIngress(t *testing.T) {
	n, pki := apiTLSNode(t)
	api := n.Pods["api"]
	// The api's ingress: GET /public.* only.
	n.WritePolicy(t, "tls-ingress.yaml", tlsIngressPolicy)
	// The client's egress: GET /public.* and /private.*.
	n.WritePolicy(t, "tls-egress.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-tls-egress}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: api}}]
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
      terminatingTLS:
        secret: {name: api-intercept}
      originatingTLS:
        secret: {name: public-cas}
      rules:
        http:
        - method: GET
          path: "/(public|private).*"
`)
	n.Start(t, 49400, 9494)

	c, stop := context.WithTimeout(context.Background(), 4*time.Minute)
	defer stop()
	curl := func(path string) string {
		return n.Curl(c, "client", "-w", " %{http_code}", "--cacert", pki.internalCA,
			"--resolve", "api.ward.test:443:"+api.IP.String(), "https://api.ward.test"+path)
	}
	node.Eventually(t, "GET /public/x (both allow) to pass", func() bool {
		return curl("/public/x") == "api /public/x sni=api.ward.test 200"
	})
	if got := curl("/private"); got != "Access denied 403" {
		t.Errorf("GET /private (egress allows, api's ingress does not) = %q; want Access denied 403", got)
	}
	if got := curl("/secret"); got != "Access denied 403" {
		t.Errorf("GET /secret (egress denies) = %q; want Access denied 403", got)
	}
}

package kube

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	agentkube "github.com/wardproxy/ward/agent/kube"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/internal/kubetest"
	"github.com/wardproxy/ward/internal/testenv"
)

const tlsNS = "k2-tls"

// TestSecretsFromKubernetes: TLS interception with the certificate of a
// Secret in the secrets namespace (cilium-secrets), read from the API
// server and delivered to Envoy by SDS reference. While the Secret is
// missing, ward status names it and the port's connections are refused
// (fail closed: the policy's other port keeps working); once created,
// Envoy presents it and enforces the HTTP rules on the decrypted
// requests.
func TestSecretsFromKubernetes(t *testing.T) {
	api := kubetest.Shared(t)
	cs, dc := api.Clients(t)
	for _, crd := range []string{"ciliumnetworkpolicies.yaml", "ciliumclusterwidenetworkpolicies.yaml"} {
		api.ApplyFile(t, filepath.Join(testenv.Root(t), "deploy/helm/ward/crds", crd))
	}
	n := node.New(t,
		node.PodSpec{Name: "api", Namespace: tlsNS, Labels: map[string]string{"app": "api"}, Unmanaged: true},
		node.PodSpec{Name: "client", Namespace: tlsNS, Labels: map[string]string{"app": "client"}, Unmanaged: true})
	c := &kcluster{t: t, api: api, cs: cs, dc: dc}
	kn := &knode{Node: n, name: "k2-tls-node"}
	c.namespace(t, tlsNS, nil)
	c.namespace(t, agentkube.DefaultSecretsNamespace, nil)
	c.createPod(t, kn, "api", podOpts{})
	c.createPod(t, kn, "client", podOpts{})
	n.Serve(t, "api", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "api %s", r.URL.Path)
	}), ":443", ":80")
	n.Config.Kubernetes = &agentkube.Config{Kubeconfig: api.Kubeconfig(), NodeName: kn.name}
	ca, crt, key := testPKI(t, "api.ward.test")
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, ca, 0o600); err != nil {
		t.Fatal(err)
	}
	n.Start(t, 46200, 9462)
	c.setPolicies(t, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: tls-ingress, namespace: `+tlsNS+`}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
      terminatingTLS:
        secret: {namespace: `+agentkube.DefaultSecretsNamespace+`, name: api-intercept}
      rules:
        http: [{method: GET, path: "/public.*"}]
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
`)
	ctx, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	curl := func(path string) string {
		return n.Curl(ctx, "client", "-w", " %{http_code}", "--cacert", caFile,
			"--resolve", "api.ward.test:443:"+n.Pods["api"].IP.String(), "https://api.ward.test"+path)
	}
	plain := func() string {
		return n.Curl(ctx, "client", "-w", " %{http_code}", "http://"+n.Pods["api"].IP.String()+"/plain")
	}
	node.Eventually(t, "the missing secret in the status", func() bool {
		return strings.Contains(strings.Join(n.Agent.Status().Errors, "\n"), "api-intercept")
	})
	node.Eventually(t, "the policy's other port", func() bool { return plain() == "api /plain 200" })
	if got := curl("/public/x"); got != "error" {
		t.Errorf("with the secret missing: curl https://api.ward.test/public/x = %q; want refused", got)
	}

	if _, err := cs.CoreV1().Secrets(agentkube.DefaultSecretsNamespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "api-intercept"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": crt, "tls.key": key}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Secrets(agentkube.DefaultSecretsNamespace).Delete(context.Background(), "api-intercept", metav1.DeleteOptions{})
	})
	node.Eventually(t, "the intercepted GET /public/x with the Secret's certificate", func() bool {
		return curl("/public/x") == "api /public/x 200"
	})
	if got := curl("/private"); got != "Access denied 403" {
		t.Errorf("curl https://api.ward.test/private = %q; want Access denied 403", got)
	}
	node.Eventually(t, "the status without the secret's error", func() bool {
		return !strings.Contains(strings.Join(n.Agent.Status().Errors, "\n"), "api-intercept")
	})
}

// testPKI makes a CA and a certificate for name signed by it (PEM).
func testPKI(t *testing.T, name string) (caPEM, crtPEM, keyPEM []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ward-test-ca"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caTmpl, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

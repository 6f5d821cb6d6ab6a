// Package kubetest runs a real Kubernetes control plane for tests: the
// etcd and kube-apiserver that `make setup` builds into build/bin
// (scripts/setup.d/80-kube.sh), on free loopback ports, as
// /work/shared/research/kubernetes-real-apiserver.md describes. There is no
// kubelet, scheduler or controller manager: pods are API objects whose
// status a test writes, namespaces deleted stay Terminating (no namespace
// controller), and the ServiceAccount admission plugin is off (nothing
// creates a namespace's "default" ServiceAccount), so a pod keeps the
// spec.serviceAccountName its test gives it.
//
// Identities: the admin token (user "admin" in system:masters, RBAC
// authorization) in Config; ConfigFor impersonates any user and groups
// (RBAC tests); TokenConfig authenticates with another token of the
// cluster's tokens.csv (Options.Tokens).
//
// Sharing: one apiserver takes ~20 s and much CPU to start, so a package
// shares one per test binary with Shared, and its TestMain stops it:
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		kubetest.StopShared()
//		os.Exit(code)
//	}
//
// Without a prerequisite (root is not one; the binaries are) the test is
// skipped, or fails under CI=1 (internal/testenv). The processes get
// SIGKILL when the test binary dies (Pdeathsig), so a crashed test leaks
// no apiserver.
package kubetest

import (
	"bytes"
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
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/wardproxy/ward/internal/testenv"
)

// AdminToken is the bearer token of the cluster's admin (system:masters).
const AdminToken = "ward-admin-token"

// Options configures StartWith.
type Options struct {
	// Tokens are more lines of the apiserver's static token file:
	// token -> user and groups (TokenConfig authenticates with them).
	Tokens map[string]TokenUser
	// ExtraArgs are appended to kube-apiserver's command line.
	ExtraArgs []string
}

// TokenUser is the identity a static token authenticates as.
type TokenUser struct {
	User   string
	Groups []string
}

// Cluster is a running etcd and kube-apiserver.
type Cluster struct {
	dir     string
	etcdBin string
	apiBin  string
	etcdURL string
	apiPort int
	caPEM   []byte
	opts    Options
	etcd    *proc
	api     *proc
}

type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// Start starts a cluster of the test's own, stopped at the test's end.
// Prefer Shared.
func Start(t testing.TB) *Cluster { t.Helper(); return StartWith(t, Options{}) }

// StartWith is Start with options.
func StartWith(t testing.TB, opts Options) *Cluster {
	t.Helper()
	etcdBin, apiBin := binaries(t)
	c, err := start(t.TempDir(), etcdBin, apiBin, opts)
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	t.Cleanup(c.Stop)
	return c
}

var shared struct {
	mu  sync.Mutex
	c   *Cluster
	err error
}

// Shared returns the test binary's shared cluster, started by the first
// call (options cannot be given: tests make the users and objects they
// need). StopShared, from TestMain, stops it. Tests sharing it must not
// depend on each other's objects: use a namespace or names of their own.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	etcdBin, apiBin := binaries(t)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.c == nil && shared.err == nil {
		dir, err := os.MkdirTemp("", "kubetest-")
		if err != nil {
			t.Fatalf("kubetest: %v", err)
		}
		shared.c, shared.err = start(dir, etcdBin, apiBin, Options{})
		if shared.err != nil {
			_ = os.RemoveAll(dir)
		}
	}
	if shared.err != nil {
		t.Fatalf("kubetest: shared cluster: %v", shared.err)
	}
	return shared.c
}

// StopShared stops the shared cluster (if started) and removes its files.
func StopShared() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.c != nil {
		shared.c.Stop()
		_ = os.RemoveAll(shared.c.dir)
		shared.c = nil
	}
}

func binaries(t testing.TB) (string, string) {
	t.Helper()
	hint := "run `make setup` (scripts/setup.d/80-kube.sh builds etcd and kube-apiserver into build/bin)"
	return testenv.File(t, "build/bin/etcd", hint), testenv.File(t, "build/bin/kube-apiserver", hint)
}

// start makes the keys and files in dir and starts etcd then the
// apiserver, once more on new ports when a port was taken meanwhile.
func start(dir, etcdBin, apiBin string, opts Options) (*Cluster, error) {
	c := &Cluster{dir: dir, etcdBin: etcdBin, apiBin: apiBin, opts: opts}
	if err := c.writeFiles(); err != nil {
		return nil, err
	}
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		if err = c.startEtcd(); err != nil {
			continue
		}
		if c.apiPort, err = freePort(); err != nil {
			return nil, err
		}
		if err = c.StartAPIServer(); err == nil {
			if err := c.writeKubeconfig(c.Kubeconfig(), AdminToken); err != nil {
				c.Stop()
				return nil, err
			}
			return c, nil
		}
		c.Stop()
	}
	return nil, err
}

// Dir is the cluster's directory (logs: etcd.log, kube-apiserver.log).
func (c *Cluster) Dir() string { return c.dir }

// Host is the apiserver's URL.
func (c *Cluster) Host() string { return "https://127.0.0.1:" + strconv.Itoa(c.apiPort) }

// CAData is the PEM of the CA that signed the apiserver's certificate.
func (c *Cluster) CAData() []byte { return c.caPEM }

// Config is the admin's client config (system:masters).
func (c *Cluster) Config() *rest.Config {
	return &rest.Config{
		Host:            c.Host(),
		BearerToken:     AdminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.caPEM},
		QPS:             1000,
		Burst:           1000,
	}
}

// ConfigFor is the admin's config impersonating user with groups (RBAC
// tests; add "system:authenticated" to groups for what every
// authenticated user may do).
func (c *Cluster) ConfigFor(user string, groups ...string) *rest.Config {
	cfg := c.Config()
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
	return cfg
}

// TokenConfig is a config authenticating with token (a line of
// Options.Tokens).
func (c *Cluster) TokenConfig(token string) *rest.Config {
	cfg := c.Config()
	cfg.BearerToken = token
	return cfg
}

// Clients are the admin's typed and dynamic clients.
func (c *Cluster) Clients(t testing.TB) (kubernetes.Interface, dynamic.Interface) {
	t.Helper()
	cs, err := kubernetes.NewForConfig(c.Config())
	if err != nil {
		t.Fatalf("kubetest: clientset: %v", err)
	}
	dc, err := dynamic.NewForConfig(c.Config())
	if err != nil {
		t.Fatalf("kubetest: dynamic client: %v", err)
	}
	return cs, dc
}

// Kubeconfig is the path of a kubeconfig file for the admin (usable by
// wardd's kubernetes.kubeconfig and build/bin/kubectl --kubeconfig).
func (c *Cluster) Kubeconfig() string { return filepath.Join(c.dir, "kubeconfig") }

// KubeconfigFor writes a kubeconfig authenticating with token (a line of
// Options.Tokens) and returns its path.
func (c *Cluster) KubeconfigFor(t testing.TB, token string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := c.writeKubeconfig(p, token); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	return p
}

func (c *Cluster) writeKubeconfig(path, token string) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: c.Host(), CertificateAuthorityData: c.caPEM}
	kc.AuthInfos["user"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: "user"}
	kc.CurrentContext = "kubetest"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}

// Stop stops the apiserver then etcd (idempotent).
func (c *Cluster) Stop() {
	c.StopAPIServer()
	if c.etcd != nil {
		c.etcd.stop()
		c.etcd = nil
	}
}

// RestartAPIServer stops the apiserver and starts it again on the same
// port with the same etcd (an outage in the middle of a test).
func (c *Cluster) RestartAPIServer(t testing.TB) {
	t.Helper()
	c.StopAPIServer()
	if err := c.StartAPIServer(); err != nil {
		t.Fatalf("kubetest: restart apiserver: %v", err)
	}
}

// StopAPIServer stops the apiserver (SIGTERM, then SIGKILL after 10 s),
// leaving etcd running; StartAPIServer brings it back.
func (c *Cluster) StopAPIServer() {
	if c.api != nil {
		c.api.stop()
		c.api = nil
	}
}

// StartAPIServer starts the apiserver (stopped or never started) and
// waits until it is ready.
func (c *Cluster) StartAPIServer() error {
	if c.api != nil {
		return errors.New("apiserver already running")
	}
	args := []string{
		"--etcd-servers", c.etcdURL,
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(c.apiPort),
		"--tls-cert-file", filepath.Join(c.dir, "apiserver.crt"),
		"--tls-private-key-file", filepath.Join(c.dir, "apiserver.key"),
		"--cert-dir", filepath.Join(c.dir, "certs"),
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", filepath.Join(c.dir, "sa.pub"),
		"--service-account-signing-key-file", filepath.Join(c.dir, "sa.key"),
		"--token-auth-file", filepath.Join(c.dir, "tokens.csv"),
		"--authorization-mode", "RBAC",
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--disable-admission-plugins", "ServiceAccount",
		"--allow-privileged=true",
		"--profiling=false",
		"--enable-priority-and-fairness=false",
		"--event-ttl", "1h",
	}
	args = append(args, c.opts.ExtraArgs...)
	p, err := run(c.apiBin, filepath.Join(c.dir, "kube-apiserver.log"), args...)
	if err != nil {
		return err
	}
	c.api = p
	if err := c.waitReady(p, 120*time.Second); err != nil {
		c.StopAPIServer()
		return err
	}
	return nil
}

func (c *Cluster) startEtcd() error {
	cp, err := freePort()
	if err != nil {
		return err
	}
	pp, err := freePort()
	if err != nil {
		return err
	}
	c.etcdURL = "http://127.0.0.1:" + strconv.Itoa(cp)
	peer := "http://127.0.0.1:" + strconv.Itoa(pp)
	data := filepath.Join(c.dir, "etcd")
	_ = os.RemoveAll(data)
	p, err := run(c.etcdBin, filepath.Join(c.dir, "etcd.log"),
		"--name", "kubetest", "--data-dir", data,
		"--listen-client-urls", c.etcdURL, "--advertise-client-urls", c.etcdURL,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "kubetest="+peer,
		"--unsafe-no-fsync", "--log-level", "warn")
	if err != nil {
		return err
	}
	c.etcd = p
	// Ready when /health answers.
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(c.etcdURL + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.done:
			c.etcd = nil
			return fmt.Errorf("etcd exited: %s", tail(p.log))
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			c.etcd = nil
			return fmt.Errorf("etcd not healthy after 60s: %s", tail(p.log))
		}
	}
}

// waitReady polls /readyz until it answers ok, then waits for the
// "default" namespace (made by the apiserver's own controller).
func (c *Cluster) waitReady(p *proc, limit time.Duration) error {
	cs, err := kubernetes.NewForConfig(c.Config())
	if err != nil {
		return fmt.Errorf("clientset: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	for {
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && bytes.Equal(bytes.TrimSpace(body), []byte("ok")) {
			if _, err := cs.CoreV1().Namespaces().Get(ctx, "default", getOpts); err == nil {
				return nil
			}
		}
		select {
		case <-p.done:
			return fmt.Errorf("kube-apiserver exited: %s", tail(p.log))
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready after %s: %s", limit, tail(p.log))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// run starts bin with its output in logPath; the process dies with the
// test binary.
func run(bin, logPath string, args ...string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", filepath.Base(bin), err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	return p, nil
}

func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// tail is the end of a log file, for error messages.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// writeFiles makes the CA and the apiserver's serving certificate
// (127.0.0.1, localhost), the service-account signing key and tokens.csv.
func (c *Cluster) writeFiles() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("ca key: %w", err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubetest-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("ca certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return fmt.Errorf("ca certificate: %w", err)
	}
	c.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("serving key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 96, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("service-account key: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("serving key: %w", err)
	}
	saDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return fmt.Errorf("service-account key: %w", err)
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return fmt.Errorf("service-account key: %w", err)
	}
	var tokens bytes.Buffer
	fmt.Fprintf(&tokens, "%s,admin,admin,\"system:masters\"\n", AdminToken)
	for tok, u := range c.opts.Tokens {
		groups := ""
		for i, g := range u.Groups {
			if i > 0 {
				groups += ","
			}
			groups += g
		}
		fmt.Fprintf(&tokens, "%s,%s,%s,%q\n", tok, u.User, u.User, groups)
	}
	files := map[string][]byte{
		"ca.crt":        c.caPEM,
		"apiserver.crt": append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), c.caPEM...),
		"apiserver.key": pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		"sa.key":        pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: saDER}),
		"sa.pub":        pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub}),
		"tokens.csv":    tokens.Bytes(),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(c.dir, name), b, 0o600); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

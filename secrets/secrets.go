// Package secrets is ward's embedded secret source for TLS interception: a
// directory with one folder per namespace/name (the Kubernetes Secret a
// policy's terminatingTLS / originatingTLS references), holding PEM files
// under the secret's keys — tls.crt, tls.key and ca.crt by default.
//
// A Source loads the directory into an immutable snapshot, validates each
// secret a policy references (the key matches the certificate, the
// certificate is within its validity period, the CA bundle parses) and
// turns it into SDS secrets named by reference, so one secret used by many
// rules is one SDS resource. Run polls the files' modification times and
// reloads on change (rotation).
//
// Invariants: key material is never logged nor put into an error message;
// files this package writes are 0600 in 0700 folders.
package secrets

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/xds"
)

// Default key names of a TLS secret (Kubernetes kubernetes.io/tls plus the
// CA bundle), as the policy language's TLSContext defaults them.
const (
	DefaultCertificate = "tls.crt"
	DefaultPrivateKey  = "tls.key"
	DefaultTrustedCA   = "ca.crt"
)

// ErrNotFound: the referenced secret, or one of its keys, does not exist.
var ErrNotFound = errors.New("secret not found")

// ErrNamespace: the reference names a namespace the source may not read
// (Config.Namespace is set and differs).
var ErrNamespace = errors.New("secret outside the secrets namespace")

// Ref references a secret and the keys to use in it; empty keys take the
// defaults.
type Ref struct {
	Namespace, Name string
	Certificate     string // default tls.crt
	PrivateKey      string // default tls.key
	TrustedCA       string // default ca.crt
}

// RefFor is the reference of a policy's terminatingTLS / originatingTLS
// (the resolved policy fills in the secret's namespace); ok is false when
// the context names no secret.
func RefFor(c *policy.TLSContext) (r Ref, ok bool) {
	if c == nil || c.Secret == nil {
		return Ref{}, false
	}
	return Ref{Namespace: c.Secret.Namespace, Name: c.Secret.Name, Certificate: c.Certificate, PrivateKey: c.PrivateKey, TrustedCA: c.TrustedCA}, true
}

func (r Ref) String() string { return r.Namespace + "/" + r.Name }

func (r Ref) keys() (crt, key, ca string) {
	crt, key, ca = r.Certificate, r.PrivateKey, r.TrustedCA
	if crt == "" {
		crt = DefaultCertificate
	}
	if key == "" {
		key = DefaultPrivateKey
	}
	if ca == "" {
		ca = DefaultTrustedCA
	}
	return crt, key, ca
}

// CertificateName is the SDS name of the reference's certificate and key:
// "namespace/name", with the key names appended when they are not the
// defaults ("namespace/name:my.crt,my.key").
func (r Ref) CertificateName() string {
	crt, key, _ := r.keys()
	if crt == DefaultCertificate && key == DefaultPrivateKey {
		return r.String()
	}
	return r.String() + ":" + crt + "," + key
}

// TrustedCAName is the SDS name of the reference's CA bundle:
// "namespace/name:ca.crt" (the key name).
func (r Ref) TrustedCAName() string {
	_, _, ca := r.keys()
	return r.String() + ":" + ca
}

// Config configures a Source.
type Config struct {
	// Dir holds one folder per namespace, one folder per secret name in it.
	Dir string
	// Namespace, when set, is the only namespace references may name (the
	// seed's "read only from the secrets namespace" mode). Empty: any
	// namespace under Dir (secrets copied into the directory by whoever
	// manages it — the default).
	Namespace string
	// Interval between polls in Run; default 2s.
	Interval time.Duration
	// OnChange is called (from Run's goroutine) after a reload that changed
	// any file; the caller re-resolves its references and publishes SDS.
	OnChange func()
	// Logger; nil discards. Only names and errors are logged, never data.
	Logger *slog.Logger
	// Now is the clock for validity checks; default time.Now.
	Now func() time.Time
}

// Source is a directory of secrets. Its methods are safe for concurrent use.
type Source struct {
	cfg  Config
	log  *slog.Logger
	snap atomic.Pointer[snapshot]
	mu   sync.Mutex // serializes Reload

	goodMu sync.Mutex
	// good holds the last version of each SDS name that validated, with
	// the expiry of its certificate (zero for CA bundles).
	good map[string]goodSecret
}

type goodSecret struct {
	secret   *tlsv3.Secret
	notAfter time.Time
}

// snapshot is one load of the directory; never mutated after publish.
type snapshot struct {
	// files by "namespace/name" then key name.
	files map[string]map[string][]byte
	// stamp summarizes paths, sizes and mtimes: a change means reload.
	stamp string
}

// New returns a Source and loads the directory once. A missing directory
// is an error; a secret that does not validate is not (Resolve reports it
// for the references that name it).
func New(cfg Config) (*Source, error) {
	if cfg.Dir == "" {
		return nil, errors.New("secrets: Config.Dir is required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 2 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	s := &Source{cfg: cfg, log: lg}
	if _, err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload re-reads the directory if any file changed and reports whether it
// did.
func (s *Source) Reload() (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	stamp, err := s.stamp()
	if err != nil {
		return false, err
	}
	if old := s.snap.Load(); old != nil && old.stamp == stamp {
		return false, nil
	}
	files := map[string]map[string][]byte{}
	for _, p := range strings.Split(stamp, "\n") {
		rel, _, _ := strings.Cut(p, "\x00")
		if rel == "" {
			continue
		}
		parts := strings.Split(rel, "/")
		b, err := os.ReadFile(filepath.Join(s.cfg.Dir, rel))
		if err != nil {
			// Gone between walk and read (a rotation in progress): the
			// next poll sees a new stamp and reloads.
			s.log.Warn("secret file unreadable", "secret", parts[0]+"/"+parts[1], "key", parts[2], "error", err)
			continue
		}
		id := parts[0] + "/" + parts[1]
		if files[id] == nil {
			files[id] = map[string][]byte{}
		}
		files[id][parts[2]] = b
	}
	s.snap.Store(&snapshot{files: files, stamp: stamp})
	s.log.Info("secrets loaded", "dir", s.cfg.Dir, "secrets", len(files))
	return true, nil
}

// stamp walks Dir/namespace/name/key (exactly three levels; Kubernetes
// volume "..data" links and dot files are skipped) and returns one line
// per file: path, size, mtime.
func (s *Source) stamp() (string, error) {
	var lines []string
	err := filepath.WalkDir(s.cfg.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == s.cfg.Dir {
				return err
			}
			return nil // a folder that vanished mid-walk
		}
		rel, _ := filepath.Rel(s.cfg.Dir, p)
		if rel == "." {
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		depth := strings.Count(rel, string(filepath.Separator))
		if d.IsDir() {
			if depth >= 2 {
				return filepath.SkipDir
			}
			return nil
		}
		if depth != 2 {
			return nil
		}
		fi, err := os.Stat(p) // follows links (mounted secrets)
		if err != nil || fi.IsDir() {
			return nil
		}
		lines = append(lines, fmt.Sprintf("%s\x00%d\x00%d", filepath.ToSlash(rel), fi.Size(), fi.ModTime().UnixNano()))
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("secrets: read %s: %w", s.cfg.Dir, err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n"), nil
}

// Run polls for changes every Interval until ctx is done, calling OnChange
// after each reload that changed something.
//
// A change is picked up once the directory has been stable for one
// interval, so that a rotation writing tls.crt then tls.key is read whole;
// should a reload still catch one half-written, Resolve keeps serving the
// last version that validated (see Resolve).
func (s *Source) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	last := ""
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		stamp, err := s.stamp()
		if err != nil {
			s.log.Warn("secrets reload failed", "error", err)
			continue
		}
		if cur := s.snap.Load(); stamp == cur.stamp || stamp != last {
			last = stamp // unchanged, or still changing
			continue
		}
		changed, err := s.Reload()
		if err != nil {
			s.log.Warn("secrets reload failed", "error", err)
			continue
		}
		if changed && s.cfg.OnChange != nil {
			s.cfg.OnChange()
		}
	}
}

// Use says which parts of a reference a rule needs.
type Use uint8

// Uses of a reference.
const (
	// UseCertificate: certificate and key (terminatingTLS, or a client
	// certificate for originatingTLS).
	UseCertificate Use = 1 << iota
	// UseTrustedCA: the CA bundle (originatingTLS).
	UseTrustedCA
)

// Request is one reference and what it is used for.
type Request struct {
	Ref Ref
	Use Use
}

// Resolve validates the requested secrets and returns their SDS resources
// (each name once, sorted by name) and one error per reference that failed,
// naming the secret; the resources of the others are returned regardless,
// so one bad secret does not stop other rules.
//
// When a secret that validated before no longer does (a rotation caught
// half-written, a bad edit), Resolve returns the last version that
// validated, as long as its certificate is still within its validity, and
// says so in the error: the rule keeps working on the old material instead
// of failing. A secret missing altogether is not replaced.
func (s *Source) Resolve(reqs []Request) ([]*tlsv3.Secret, error) {
	snap := s.snap.Load()
	now := s.cfg.Now()
	byName := map[string]*tlsv3.Secret{}
	var errs []error
	for _, q := range reqs {
		r := q.Ref
		if s.cfg.Namespace != "" && r.Namespace != s.cfg.Namespace {
			errs = append(errs, fmt.Errorf("secret %s: %w %q (read-only-from-secrets-namespace mode): copy it there", r, ErrNamespace, s.cfg.Namespace))
			continue
		}
		files := snap.files[r.String()]
		if files == nil {
			errs = append(errs, fmt.Errorf("secret %s: %w in %s", r, ErrNotFound, s.cfg.Dir))
			continue
		}
		crtKey, keyKey, caKey := r.keys()
		if q.Use&UseCertificate != 0 && byName[r.CertificateName()] == nil {
			crt, key := files[crtKey], files[keyKey]
			switch {
			case crt == nil:
				errs = append(errs, fmt.Errorf("secret %s: key %s: %w", r, crtKey, ErrNotFound))
			case key == nil:
				errs = append(errs, fmt.Errorf("secret %s: key %s: %w", r, keyKey, ErrNotFound))
			default:
				if notAfter, err := checkPair(crt, key, now); err != nil {
					errs = append(errs, s.lastGood(byName, r.CertificateName(), now, fmt.Errorf("secret %s (%s, %s): %w", r, crtKey, keyKey, err)))
				} else {
					byName[r.CertificateName()] = xds.CertificateSecret(r.CertificateName(), crt, key)
					s.remember(byName[r.CertificateName()], notAfter)
				}
			}
		}
		if q.Use&UseTrustedCA != 0 && byName[r.TrustedCAName()] == nil {
			ca := files[caKey]
			if ca == nil {
				errs = append(errs, fmt.Errorf("secret %s: key %s: %w", r, caKey, ErrNotFound))
			} else if err := checkBundle(ca); err != nil {
				errs = append(errs, s.lastGood(byName, r.TrustedCAName(), now, fmt.Errorf("secret %s (%s): %w", r, caKey, err)))
			} else {
				byName[r.TrustedCAName()] = xds.ValidationSecret(r.TrustedCAName(), ca)
				s.remember(byName[r.TrustedCAName()], time.Time{})
			}
		}
	}
	out := make([]*tlsv3.Secret, 0, len(byName))
	for _, sec := range byName {
		out = append(out, sec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out, errors.Join(errs...)
}

// Value is the value of a secret holding exactly one item (a key of any
// name), for headerMatches: Cilium's GetSecretString. The namespace rule
// of Resolve applies (Config.Namespace).
func (s *Source) Value(namespace, name string) (string, error) {
	r := Ref{Namespace: namespace, Name: name}
	if s.cfg.Namespace != "" && namespace != s.cfg.Namespace {
		return "", fmt.Errorf("secret %s: %w %q (read-only-from-secrets-namespace mode): copy it there", r, ErrNamespace, s.cfg.Namespace)
	}
	files := s.snap.Load().files[r.String()]
	if files == nil {
		return "", fmt.Errorf("secret %s: %w in %s", r, ErrNotFound, s.cfg.Dir)
	}
	if len(files) != 1 {
		return "", fmt.Errorf("secret %s: must have exactly one item, has %d", r, len(files))
	}
	for _, v := range files {
		return string(v), nil
	}
	return "", nil // unreachable
}

// remember records sec as the last version of its name that validated.
func (s *Source) remember(sec *tlsv3.Secret, notAfter time.Time) {
	s.goodMu.Lock()
	defer s.goodMu.Unlock()
	if s.good == nil {
		s.good = map[string]goodSecret{}
	}
	s.good[sec.GetName()] = goodSecret{secret: sec, notAfter: notAfter}
}

// lastGood puts the last valid version of name into byName when there is
// one still valid at now, and returns err annotated accordingly.
func (s *Source) lastGood(byName map[string]*tlsv3.Secret, name string, now time.Time, err error) error {
	s.goodMu.Lock()
	g, ok := s.good[name]
	s.goodMu.Unlock()
	if !ok || (!g.notAfter.IsZero() && now.After(g.notAfter)) {
		return err
	}
	byName[name] = g.secret
	return fmt.Errorf("%w (serving the last valid version)", err)
}

// checkPair verifies that key belongs to the first certificate of crt and
// that the certificate is valid at now, and returns its expiry. Errors
// never quote key bytes.
func checkPair(crt, key []byte, now time.Time) (time.Time, error) {
	pair, err := tls.X509KeyPair(crt, key)
	if err != nil {
		// crypto/tls errors describe the mismatch, not the key.
		return time.Time{}, fmt.Errorf("certificate and key: %w", err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return time.Time{}, fmt.Errorf("certificate: %w", err)
		}
	}
	if now.After(leaf.NotAfter) {
		return time.Time{}, fmt.Errorf("certificate %q expired at %s", leaf.Subject.CommonName, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(leaf.NotBefore) {
		return time.Time{}, fmt.Errorf("certificate %q not valid before %s", leaf.Subject.CommonName, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	return leaf.NotAfter, nil
}

// checkBundle verifies that every PEM block of a CA bundle is a parsable
// certificate and that there is at least one.
func checkBundle(b []byte) error {
	n := 0
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return fmt.Errorf("CA bundle: block %d is %q, not CERTIFICATE", n+1, blk.Type)
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return fmt.Errorf("CA bundle: certificate %d: %w", n+1, err)
		}
		n++
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return fmt.Errorf("CA bundle: %d bytes after certificate %d are not PEM", len(bytes.TrimSpace(rest)), n)
	}
	if n == 0 {
		return errors.New("CA bundle: no certificate")
	}
	return nil
}

// Write stores a secret's keys under dir/namespace/name (folders 0700,
// files 0600), each file replaced atomically (temporary file + rename), so
// a concurrent reload sees the old or the new content, never a torn file.
func Write(dir string, ref Ref, keys map[string][]byte) error {
	if ref.Namespace == "" || ref.Name == "" || strings.ContainsAny(ref.Namespace+ref.Name, `/\`) || strings.HasPrefix(ref.Namespace, ".") || strings.HasPrefix(ref.Name, ".") {
		return fmt.Errorf("secrets: write %s: invalid namespace or name", ref)
	}
	d := filepath.Join(dir, ref.Namespace, ref.Name)
	if err := os.MkdirAll(d, 0o700); err != nil {
		return fmt.Errorf("secrets: write %s: %w", ref, err)
	}
	for k, v := range keys {
		if k == "" || strings.ContainsAny(k, `/\`) || strings.HasPrefix(k, ".") {
			return fmt.Errorf("secrets: write %s: invalid key name %q", ref, k)
		}
		f, err := os.CreateTemp(d, ".tmp-")
		if err != nil {
			return fmt.Errorf("secrets: write %s: %w", ref, err)
		}
		// CreateTemp makes the file 0600 already; say so for the reader.
		err = f.Chmod(0o600)
		if err == nil {
			_, err = f.Write(v)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(f.Name(), filepath.Join(d, k))
		}
		if err != nil {
			os.Remove(f.Name())
			return fmt.Errorf("secrets: write %s key %s: %w", ref, k, err)
		}
	}
	return nil
}

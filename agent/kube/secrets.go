package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/wardproxy/ward/secrets"
)

// SecretsMirror keeps the Secrets of the secrets namespace in a directory
// laid out as package secrets reads it (dir/<namespace>/<name>/<key>,
// folders 0700, files 0600, each replaced atomically), so that the TLS
// policy's secret source — references resolved by namespace/name, handed
// to Envoy over SDS, a rotation reaching new handshakes — works the same
// for Kubernetes as for the node config's secretsDir. Only that namespace
// is watched (the agent's RBAC reads secrets there only, as Cilium's
// readSecretsOnlyFromSecretsNamespace): a policy referencing a secret
// elsewhere, or one that does not exist, gets the secret source's error
// for its rules only, which are left out (fail closed).
//
// Unchanged keys are not rewritten (the source reloads on a file's
// modification time); keys and secrets gone from the namespace are
// removed.
type SecretsMirror struct {
	dir, ns string
	log     *slog.Logger
	factory informers.SharedInformerFactory
	lister  listerscorev1.SecretLister
	synced  cache.InformerSynced
	wake    chan struct{}
	ready   chan struct{}
}

// NewSecretsMirror mirrors namespace's secrets into dir (created 0700).
// It has an informer factory of its own, limited to namespace.
func NewSecretsMirror(cs kubernetes.Interface, namespace, dir string, log *slog.Logger) (*SecretsMirror, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("kubernetes secrets mirror: %w", err)
	}
	f := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(namespace))
	inf := f.Core().V1().Secrets()
	m := &SecretsMirror{dir: dir, ns: namespace, log: log, factory: f, lister: inf.Lister(), wake: make(chan struct{}, 1), ready: make(chan struct{})}
	kick := func() {
		select {
		case m.wake <- struct{}{}:
		default:
		}
	}
	reg, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { kick() }, UpdateFunc: func(any, any) { kick() }, DeleteFunc: func(any) { kick() },
	})
	if err != nil {
		return nil, fmt.Errorf("kubernetes secrets mirror: %w", err)
	}
	m.synced = reg.HasSynced
	return m, nil
}

// Synced is closed after the first complete mirror.
func (m *SecretsMirror) Synced() <-chan struct{} { return m.ready }

// Run watches the namespace's secrets and mirrors them until ctx is done.
func (m *SecretsMirror) Run(ctx context.Context) error {
	m.factory.Start(ctx.Done())
	defer m.factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), m.synced) {
		return nil
	}
	first := true
	for {
		if err := m.mirror(); err != nil {
			m.log.Warn("kubernetes secrets mirror", "namespace", m.ns, "error", err)
		}
		if first {
			close(m.ready)
			first = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.wake:
		}
	}
}

// mirror writes what changed and removes what is gone.
func (m *SecretsMirror) mirror() error {
	list, err := m.lister.Secrets(m.ns).List(labels.Everything())
	if err != nil {
		return err
	}
	var errs []error
	want := map[string]map[string]bool{}
	for _, s := range list {
		keys := map[string][]byte{}
		for k, v := range s.Data {
			if validKey(k) {
				keys[k] = v
			}
		}
		for k, v := range s.StringData { // only on writes; kept for fake clients
			if validKey(k) {
				keys[k] = []byte(v)
			}
		}
		want[s.Name] = map[string]bool{}
		changed := map[string][]byte{}
		for k, v := range keys {
			want[s.Name][k] = true
			if old, err := os.ReadFile(filepath.Join(m.dir, m.ns, s.Name, k)); err == nil && bytes.Equal(old, v) {
				continue
			}
			changed[k] = v
		}
		if len(changed) > 0 {
			if err := secrets.Write(m.dir, secrets.Ref{Namespace: m.ns, Name: s.Name}, changed); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// Gone secrets and keys.
	nsDir := filepath.Join(m.dir, m.ns)
	des, err := os.ReadDir(nsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, de := range des {
		if !de.IsDir() || strings.HasPrefix(de.Name(), ".") {
			continue
		}
		keys, ok := want[de.Name()]
		if !ok {
			if err := os.RemoveAll(filepath.Join(nsDir, de.Name())); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		files, _ := os.ReadDir(filepath.Join(nsDir, de.Name()))
		for _, f := range files {
			if !keys[f.Name()] && !strings.HasPrefix(f.Name(), ".") {
				if err := os.Remove(filepath.Join(nsDir, de.Name(), f.Name())); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// validKey: a Secret data key usable as a file name (Kubernetes allows
// [-._a-zA-Z0-9]+; a leading dot is a hidden file the source skips).
func validKey(k string) bool {
	return k != "" && !strings.HasPrefix(k, ".") && !strings.ContainsAny(k, `/\`)
}

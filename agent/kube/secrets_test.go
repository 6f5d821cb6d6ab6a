package kube

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestSecretsMirror: the secrets namespace's secrets appear in the
// secret source's layout, changes follow, unchanged keys are not
// rewritten, deleted secrets and keys go, other namespaces are not read.
func TestSecretsMirror(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs := fake.NewClientset(
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "cilium-secrets", Name: "tls"}, Data: map[string][]byte{"tls.crt": []byte("crt"), "tls.key": []byte("key")}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "other"}, Data: map[string][]byte{"tls.crt": []byte("x")}},
	)
	dir := t.TempDir()
	m, err := NewSecretsMirror(cs, "cilium-secrets", dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-m.Synced()
	read := func(rel string) string {
		b, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			return "<none>"
		}
		return string(b)
	}
	if got := read("cilium-secrets/tls/tls.crt"); got != "crt" {
		t.Fatalf("tls.crt = %q; want crt", got)
	}
	if got := read("default/other/tls.crt"); got != "<none>" {
		t.Errorf("a secret outside the secrets namespace was mirrored: %q", got)
	}
	fi, err := os.Stat(filepath.Join(dir, "cilium-secrets/tls/tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	sec, _ := cs.CoreV1().Secrets("cilium-secrets").Get(ctx, "tls", metav1.GetOptions{})
	sec.Data = map[string][]byte{"tls.crt": []byte("crt2"), "tls.key": []byte("key")}
	if _, err := cs.CoreV1().Secrets("cilium-secrets").Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rotated certificate", func() bool { return read("cilium-secrets/tls/tls.crt") == "crt2" })
	if fi2, err := os.Stat(filepath.Join(dir, "cilium-secrets/tls/tls.key")); err != nil || !fi2.ModTime().Equal(fi.ModTime()) {
		t.Errorf("unchanged tls.key rewritten (%v)", err)
	}
	sec.Data = map[string][]byte{"tls.crt": []byte("crt2")}
	if _, err := cs.CoreV1().Secrets("cilium-secrets").Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the removed key to go", func() bool { return read("cilium-secrets/tls/tls.key") == "<none>" })
	if err := cs.CoreV1().Secrets("cilium-secrets").Delete(ctx, "tls", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the deleted secret to go", func() bool {
		_, err := os.Stat(filepath.Join(dir, "cilium-secrets/tls"))
		return os.IsNotExist(err)
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

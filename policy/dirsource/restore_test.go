package dirsource

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/wardproxy/ward/policy"
)

// TestRestoreKeepsLastGood: the files saved after a complete, valid scan
// are restored at the next start; a file that is invalid on disk then
// keeps its last good policies, a missing directory keeps everything, and
// a file deleted from a readable directory is removed.
func TestRestoreKeepsLastGood(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := t.TempDir()
	t0 := time.Now().Add(-time.Hour)
	write(t, filepath.Join(dir, "a.yaml"), pol("deny-a", "a"), t0)
	write(t, filepath.Join(dir, "b.yaml"), pol("deny-b", "b"), t0)
	first := &recorder{repo: policy.NewRepository(policy.Config{})}
	src := &Source{Dir: dir, Sink: first.repo, Logger: quiet}
	if err := src.Sync(); err != nil {
		t.Fatal(err)
	}
	good, ok := src.Good()
	if !ok || len(good) != 2 || string(good["a.yaml"]) != pol("deny-a", "a") {
		t.Fatalf("Good() = %v, %v; want both files", good, ok)
	}

	restart := func(t *testing.T) (*recorder, *Source) {
		r := &recorder{repo: policy.NewRepository(policy.Config{})}
		s := &Source{Dir: dir, Sink: r.repo, Logger: quiet}
		if err := s.Restore(good); err != nil {
			t.Fatal(err)
		}
		return r, s
	}

	t.Run("invalid file keeps its last good version", func(t *testing.T) {
		write(t, filepath.Join(dir, "a.yaml"), "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: deny-a}\nspec: {endpointSelector: {matchLabels: {app: a}}, ingress: [{toPorts: [{ports: [{port: \"99999\"}]}]}]}\n", t0.Add(time.Minute))
		r, s := restart(t)
		if err := s.Sync(); err == nil {
			t.Fatal("Sync() = nil; want the invalid file's error")
		}
		if got := r.names(); !slices.Equal(got, []string{"deny-a=a", "deny-b=b"}) {
			t.Errorf("policies = %v; want the last good deny-a and deny-b", got)
		}
		if _, ok := s.Good(); ok {
			t.Error("Good() = ok with an invalid file")
		}
		write(t, filepath.Join(dir, "a.yaml"), pol("deny-a", "a"), t0.Add(2*time.Minute))
	})
	t.Run("missing directory keeps everything", func(t *testing.T) {
		moved := dir + ".moved"
		if err := os.Rename(dir, moved); err != nil {
			t.Fatal(err)
		}
		defer os.Rename(moved, dir)
		r, s := restart(t)
		if err := s.Sync(); err == nil {
			t.Fatal("Sync() = nil; want the missing directory's error")
		}
		if got := r.names(); !slices.Equal(got, []string{"deny-a=a", "deny-b=b"}) {
			t.Errorf("policies = %v; want both kept", got)
		}
	})
	t.Run("deleted file is removed", func(t *testing.T) {
		os.Remove(filepath.Join(dir, "b.yaml"))
		r, s := restart(t)
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
		if got := r.names(); !slices.Equal(got, []string{"deny-a=a"}) {
			t.Errorf("policies = %v; want only deny-a", got)
		}
	})
}

// TestOnChangeMayReadTheSource: OnChange runs without the source's lock,
// so it can read Good and Status (the agent saves the last good files from
// it).
func TestOnChangeMayReadTheSource(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a.yaml"), pol("a", "a"), time.Now())
	r := &recorder{repo: policy.NewRepository(policy.Config{})}
	var got map[string][]byte
	src := &Source{Dir: dir, Sink: r.repo, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	src.OnChange = func() { got, _ = src.Good(); src.Status() }
	done := make(chan error, 1)
	go func() { done <- src.Sync() }()
	select {
	case err := <-done:
		if err != nil || len(got) != 1 {
			t.Fatalf("Sync() = %v, Good in OnChange = %v; want nil and a.yaml", err, got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Sync deadlocked: OnChange called with the source's lock held")
	}
}

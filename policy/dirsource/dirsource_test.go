package dirsource

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/policy"
)

func pol(name, app string) string {
	return "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: " + name + "}\nspec:\n  endpointSelector: {matchLabels: {app: " + app + "}}\n  ingress: [{}]\n"
}

type recorder struct {
	repo *policy.Repository
}

func (r *recorder) names() []string {
	var out []string
	for _, p := range r.repo.Policies() {
		out = append(out, p.Metadata.Name+"="+p.Spec.EndpointSelector.MatchLabels["app"])
	}
	return out
}

func write(t *testing.T, path, data string, mod time.Time) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	// Distinct modification times without sleeping.
	if err := os.Chtimes(path, mod, mod); err != nil {
		t.Fatal(err)
	}
}

func TestSource(t *testing.T) {
	dir := t.TempDir()
	rec := &recorder{repo: policy.NewRepository(policy.Config{})}
	changes := 0
	s := &Source{Dir: dir, Sink: rec.repo, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), OnChange: func() { changes++ }}
	t0 := time.Unix(1_700_000_000, 0)
	check := func(want ...string) {
		t.Helper()
		got := strings.Join(rec.names(), " ")
		if got != strings.Join(want, " ") {
			t.Errorf("policies = %q, want %q", got, strings.Join(want, " "))
		}
	}

	write(t, filepath.Join(dir, "a.yaml"), pol("a", "one"), t0)
	write(t, filepath.Join(dir, "b.yaml"), pol("b", "two")+"---\n"+pol("c", "three"), t0)
	write(t, filepath.Join(dir, "x.flows.json"), "[]", t0)
	write(t, filepath.Join(dir, "notes.txt"), "ignored", t0)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	check("a=one", "b=two", "c=three")
	if changes != 1 {
		t.Errorf("changes = %d", changes)
	}

	// A scan without changes changes nothing.
	if err := s.Sync(); err != nil || changes != 1 {
		t.Fatalf("idle scan: %v, changes %d", err, changes)
	}

	// Edit: c is removed from b.yaml, b changes.
	write(t, filepath.Join(dir, "b.yaml"), pol("b", "two-v2"), t0.Add(time.Second))
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	check("a=one", "b=two-v2")

	// A broken edit is reported; the file's previous policies stay, the
	// other files are unaffected.
	write(t, filepath.Join(dir, "b.yaml"), pol("b", "two-v3")+"  egres: []\n", t0.Add(2*time.Second))
	err := s.Sync()
	if err == nil || !strings.Contains(err.Error(), `unknown field "egres"`) {
		t.Fatalf("error = %v", err)
	}
	check("a=one", "b=two-v2")
	st := s.Status()
	if len(st) != 2 || st[1].Err == nil || st[0].Err != nil {
		t.Errorf("status = %+v", st)
	}
	// The error is reported again on the next scan.
	if err := s.Sync(); err == nil {
		t.Error("error forgotten")
	}

	// A new bad file does not affect the good ones.
	write(t, filepath.Join(dir, "sub"), "", t0)
	os.Remove(filepath.Join(dir, "sub"))
	write(t, filepath.Join(dir, "dup.yaml"), pol("a", "dup"), t0)
	if err := s.Sync(); err == nil || !strings.Contains(err.Error(), "already defined") {
		t.Fatalf("duplicate: %v", err)
	}
	check("a=one", "b=two-v2")

	// Fix and delete.
	write(t, filepath.Join(dir, "b.yaml"), pol("b", "two-v4"), t0.Add(3*time.Second))
	os.Remove(filepath.Join(dir, "a.yaml"))
	os.Remove(filepath.Join(dir, "dup.yaml"))
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	check("b=two-v4")
}

func TestFilesAndLoad(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "nested"), 0o755)
	os.MkdirAll(filepath.Join(dir, ".hidden"), 0o755)
	write(t, filepath.Join(dir, "a.yaml"), pol("a", "one"), time.Now())
	write(t, filepath.Join(dir, "nested", "b.yml"), pol("b", "two"), time.Now())
	write(t, filepath.Join(dir, ".hidden", "c.yaml"), pol("c", "three"), time.Now())
	write(t, filepath.Join(dir, "bad.json"), "{", time.Now())
	files, err := Files(dir)
	if err != nil || len(files) != 3 {
		t.Fatalf("files = %v %v", files, err)
	}
	ps, err := Load(dir)
	if err == nil || len(ps) != 2 {
		t.Errorf("load = %d policies, %v", len(ps), err)
	}
	write(t, filepath.Join(dir, "nested", "dup.yaml"), pol("a", "again"), time.Now())
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "already defined") {
		t.Errorf("duplicate: %v", err)
	}
}

// TestFeatures: a policy using a gated construct is refused (file error
// naming the field and the option) unless the source's Features enable it.
func TestFeatures(t *testing.T) {
	doc := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: vrrp}\nspec:\n  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{protocol: VRRP}]}]\n"
	for _, on := range []bool{false, true} {
		dir := t.TempDir()
		rec := &recorder{repo: policy.NewRepository(policy.Config{})}
		s := &Source{Dir: dir, Sink: rec.repo, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			Features: policy.Features{ExtendedIPProtocols: on}}
		write(t, filepath.Join(dir, "vrrp.yaml"), doc, time.Unix(1_700_000_000, 0))
		err := s.Sync()
		switch {
		case on && (err != nil || len(rec.repo.Policies()) != 1):
			t.Errorf("option on: err %v, %d policies", err, len(rec.repo.Policies()))
		case !on && (err == nil || !strings.Contains(err.Error(), "spec.ingress[0].toPorts[0].ports[0].protocol") || !strings.Contains(err.Error(), "enableExtendedIPProtocols") || len(rec.repo.Policies()) != 0):
			t.Errorf("option off: err %v, %d policies", err, len(rec.repo.Policies()))
		}
	}
}

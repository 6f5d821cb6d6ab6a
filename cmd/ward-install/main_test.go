package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestInstallReplacesByRename: the new content is in place with the
// source's mode, and a reader that had the old file open (Envoy with the
// old libward.so mapped) still reads the old content: the file was
// replaced, not overwritten. No temporary file is left behind.
func TestInstallReplacesByRename(t *testing.T) {
	src, dest := t.TempDir(), t.TempDir()
	lib := filepath.Join(src, "libward.so")
	if err := os.WriteFile(lib, []byte("new library"), 0o755); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(dest, "libward.so")
	if err := os.WriteFile(old, []byte("old library"), 0o644); err != nil {
		t.Fatal(err)
	}
	held, err := os.Open(old)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	var stderr bytes.Buffer
	if code := run([]string{"--dest", dest, lib}, &stderr); code != 0 {
		t.Fatalf("run = %d (%s); want 0", code, stderr.String())
	}
	got, err := os.ReadFile(old)
	if err != nil || string(got) != "new library" {
		t.Errorf("installed file = %q, %v; want %q", got, err, "new library")
	}
	if st, err := os.Stat(old); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("installed mode = %v, %v; want 0755", st.Mode(), err)
	}
	heldData, err := io.ReadAll(held)
	if err != nil || string(heldData) != "old library" {
		t.Errorf("open handle reads %q, %v; want the old content %q", heldData, err, "old library")
	}
	ents, _ := os.ReadDir(dest)
	if len(ents) != 1 {
		t.Errorf("destination holds %d entries; want only libward.so", len(ents))
	}
}

func TestInstallErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		want int
	}{
		{name: "no dest", args: []string{filepath.Join(dir, "x")}, want: 2},
		{name: "no file", args: []string{"--dest", dir}, want: 2},
		{name: "missing source", args: []string{"--dest", dir, filepath.Join(dir, "missing")}, want: 1},
		{name: "directory source", args: []string{"--dest", t.TempDir(), dir}, want: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if got := run(tc.args, &stderr); got != tc.want {
				t.Errorf("run(%q) = %d; want %d (%s)", tc.args, got, tc.want, stderr.String())
			}
		})
	}
}

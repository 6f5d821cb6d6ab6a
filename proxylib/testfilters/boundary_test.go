package testfilters_test

import (
	"bytes"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/wardproxy/ward/internal/testenv"
	"github.com/wardproxy/ward/proxylib/testfilters"
)

const (
	module = "github.com/wardproxy/ward/proxylib/module"
	self   = "github.com/wardproxy/ward/proxylib/testfilters"
)

func deps(t *testing.T, tags ...string) []string {
	t.Helper()
	goBin := testenv.RequireCommand(t, "go")
	args := []string{"list", "-deps"}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.Command(goBin, append(args, module)...)
	cmd.Dir = testenv.Root(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v", strings.Join(args, " "), err)
	}
	return strings.Fields(string(out))
}

// TestProductionModuleHasNoTestFilters (issue 11 item 4): the production
// libward.so links no test filter; the test module (-tags wardtest) does.
func TestProductionModuleHasNoTestFilters(t *testing.T) {
	if slices.Contains(deps(t), self) {
		t.Errorf("go list -deps %s contains %s; want the test filters only with -tags wardtest", module, self)
	}
	if !slices.Contains(deps(t, "wardtest"), self) {
		t.Errorf("go list -tags wardtest -deps %s lacks %s; the Envoy test suites need them", module, self)
	}
}

// TestBuiltModules: what `make build` produced agrees: build/libward.so
// names no test filter, build/test/libward.so names them all.
func TestBuiltModules(t *testing.T) {
	names := []string{testfilters.PanicHTTP, testfilters.PanicTCP, testfilters.Passthrough, testfilters.Inspect}
	prod, err := os.ReadFile(testenv.File(t, "build/libward.so", "run `make build`"))
	if err != nil {
		t.Fatal(err)
	}
	test, err := os.ReadFile(testenv.File(t, testenv.TestModuleDir+"/libward.so", "run `make build`"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if bytes.Contains(prod, []byte(n)) {
			t.Errorf("build/libward.so contains the test filter name %q (stale build? run `make build`)", n)
		}
		if !bytes.Contains(test, []byte(n)) {
			t.Errorf("%s/libward.so lacks the test filter name %q", testenv.TestModuleDir, n)
		}
	}
}

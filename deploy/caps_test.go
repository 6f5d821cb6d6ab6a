package deploy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/internal/testenv"
)

// capChildEnv makes the test binary load ward's datapath into the bpffs
// directory it names and exit (TestMain): the child TestWarddCapabilities
// runs with a reduced capability set.
const capChildEnv = "WARD_DEPLOY_CAPCHECK_PINDIR"

// capChild loads the datapath as wardd does at start (programs through the
// verifier, maps pinned, the sk_msg attach) and reports the error.
func capChild(pinDir string) int {
	d, err := redirect.Load(redirect.Config{PinDir: pinDir})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := d.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// warddCapabilities are the capabilities the rendered wardd DaemonSet adds.
func warddCapabilities(t *testing.T) []string {
	t.Helper()
	for _, o := range manifest(t, "ward.yaml") {
		if o.GetKind() != "DaemonSet" || o.GetName() != "wardd" {
			continue
		}
		cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		for _, c := range cs {
			c := c.(map[string]any)
			if c["name"] != "wardd" {
				continue
			}
			add, _, _ := unstructured.NestedStringSlice(c, "securityContext", "capabilities", "add")
			drop, _, _ := unstructured.NestedStringSlice(c, "securityContext", "capabilities", "drop")
			if !slices.Equal(drop, []string{"ALL"}) {
				t.Fatalf("wardd drops %q; want ALL", drop)
			}
			return add
		}
	}
	t.Fatal("no wardd container in manifests/ward.yaml")
	return nil
}

// TestWarddCapabilities holds the chart's capability list for wardd to
// the kernel: wardd's datapath loads with exactly the capabilities the
// DaemonSet adds (setpriv empties the bounding set but for them; no
// CAP_SYS_ADMIN, the node's bpffs already mounted as the chart mounts it),
// and fails without any one of them, so each is needed.
func TestWarddCapabilities(t *testing.T) {
	testenv.RequireRoot(t)
	setpriv := testenv.RequireCommand(t, "setpriv")
	caps := warddCapabilities(t)
	if len(caps) == 0 {
		t.Fatal("wardd adds no capability")
	}
	bpffs := t.TempDir()
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(bpffs, unix.MNT_DETACH) })
	load := func(keep []string) (string, error) {
		pinDir := filepath.Join(bpffs, "ward")
		defer os.RemoveAll(pinDir)
		set := "-all"
		for _, c := range keep {
			set += ",+" + strings.ToLower(c)
		}
		cmd := exec.Command(setpriv, "--bounding-set", set, "--inh-caps", "-all", os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), capChildEnv+"="+pinDir)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := load(caps); err != nil {
		t.Fatalf("datapath with %v: %v\n%s", caps, err, out)
	}
	for _, c := range caps {
		rest := slices.DeleteFunc(slices.Clone(caps), func(x string) bool { return x == c })
		out, err := load(rest)
		if err == nil {
			t.Errorf("datapath loads without CAP_%s (with %v): the chart need not add it", c, rest)
			continue
		}
		first, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
		t.Logf("without CAP_%s: %s", c, first)
	}
}

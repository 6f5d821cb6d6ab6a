package deploy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/internal/testenv"
)

// TestCleanupAsRendered: the cleanup mode's bpf-cleanup init container,
// its command run as rendered (the node's /sys/fs/bpf mapped to a bpffs
// of the test) with only the capabilities it adds, in a network namespace
// of its own holding wardd's proxy routing rule, removes what a wardd
// left: the loaded datapath's programs, maps and links and the rule.
func TestCleanupAsRendered(t *testing.T) {
	testenv.RequireRoot(t)
	setpriv := testenv.RequireCommand(t, "setpriv")
	unshare := testenv.RequireCommand(t, "unshare")
	c := renderedContainerIn(t, "ward-cleanup.yaml", "ward-cleanup", "bpf-cleanup")
	if len(c.command) < 3 || c.command[0] != "/usr/bin/ward" || c.command[1] != "bpf" || c.command[2] != "cleanup" {
		t.Fatalf("bpf-cleanup runs %q; want /usr/bin/ward bpf cleanup", c.command)
	}
	bpffs := t.TempDir()
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(bpffs, unix.MNT_DETACH) })
	paths := strings.NewReplacer("/sys/fs/bpf", bpffs)
	var pinDir string
	args := []string{"-", setpriv, "--bounding-set", "-all"}
	for _, cp := range c.caps {
		args[len(args)-1] += ",+" + strings.ToLower(cp)
	}
	args = append(args, "--inh-caps", "-all", goBuild(t, "cmd/ward"))
	for _, a := range c.command[1:] {
		a = paths.Replace(a)
		if p, ok := strings.CutPrefix(a, "--pin-dir="); ok {
			pinDir = p
		}
		args = append(args, a)
	}
	if pinDir == "" || !strings.HasPrefix(pinDir, bpffs) {
		t.Fatalf("bpf-cleanup %q names no pin directory under /sys/fs/bpf", c.command)
	}
	d, err := redirect.Load(redirect.Config{PinDir: pinDir})
	if err != nil {
		t.Fatalf("load the datapath to clean up: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if ents, err := os.ReadDir(pinDir); err != nil || len(ents) == 0 {
		t.Fatalf("pinned state under %s: %d entries, %v; want some", pinDir, len(ents), err)
	}
	// In the namespace: wardd's proxy routing rule first (as wardd leaves
	// it), then the cleanup with the container's capabilities, then what
	// rules are left.
	ip := testenv.RequireCommand(t, "ip")
	script := fmt.Sprintf("%s rule add fwmark %#x/%#x lookup 2004 pref 9000 && \"$@\"; echo ==rules; %s rule list", ip, redirect.MarkToProxy, redirect.MarkMask, ip)
	out, err := exec.Command(unshare, append([]string{"--net", "sh", "-c", script, "sh"}, args[1:]...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("bpf-cleanup (%s): %v\n%s", strings.Join(args, " "), err, out)
	}
	_, rules, _ := strings.Cut(string(out), "==rules")
	if rules == "" || strings.Contains(rules, "lookup 2004") {
		t.Errorf("after bpf-cleanup the rules are:%s\nwant the proxy routing rule (lookup 2004) removed", rules)
	}
	if _, err := os.Stat(pinDir); !os.IsNotExist(err) {
		ents, _ := os.ReadDir(pinDir)
		var names []string
		for _, e := range ents {
			names = append(names, filepath.Base(e.Name()))
		}
		t.Errorf("after bpf-cleanup %s is still there (%v, %q); want it removed", pinDir, err, names)
	}
}

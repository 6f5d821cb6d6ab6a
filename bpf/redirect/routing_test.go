package redirect

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/internal/testenv"
)

// inNetNS runs fn on a thread inside a fresh network namespace (the ip
// commands fn runs inherit it).
func inNetNS(t *testing.T, name string, fn func() error) {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	target, err := os.Open("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- err
			return
		}
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func rules(t *testing.T, ns, family string) []string {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, family, "rule", "list", "fwmark", "0xd00/0xf00").CombinedOutput()
	if err != nil {
		t.Fatalf("ip rule list: %v: %s", err, out)
	}
	return strings.Fields(strings.TrimSpace(string(out)))
}

// TestInstallProxyRoutingIdempotent: a wardd killed with -9 leaves its
// rules and routes; the next start adopts them instead of failing with
// "File exists" (issue 12, item 11), and its undo removes them.
func TestInstallProxyRoutingIdempotent(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip")
	ns := fmt.Sprintf("ward-rt-%d", os.Getpid())
	var first, second []string
	inNetNS(t, ns, func() error {
		if _, err := InstallProxyRouting(Routing{}); err != nil { // "killed": undo never runs
			return fmt.Errorf("first InstallProxyRouting: %w", err)
		}
		first = rules(t, ns, "-4")
		undo, err := InstallProxyRouting(Routing{})
		if err != nil {
			return fmt.Errorf("second InstallProxyRouting (restart): %w", err)
		}
		second = rules(t, ns, "-4")
		if n := len(rules(t, ns, "-6")); n == 0 {
			return fmt.Errorf("no IPv6 rule")
		}
		// One socket-mark table with its one rule (the killed process's
		// replaced, not doubled).
		if n, err := socketMarkRules(nftTableName(2004)); err != nil || n != 1 {
			return fmt.Errorf("nftables table %s: %d rules, %v; want 1", nftTableName(2004), n, err)
		}
		if err := undo(); err != nil {
			return fmt.Errorf("undo: %w", err)
		}
		if r := append(rules(t, ns, "-4"), rules(t, ns, "-6")...); len(r) != 0 {
			return fmt.Errorf("rules left after undo: %v", r)
		}
		if n, err := socketMarkRules(nftTableName(2004)); err != nil || n != -1 {
			return fmt.Errorf("nftables table %s after undo: %d rules, %v; want no table", nftTableName(2004), n, err)
		}
		return nil
	})
	if len(first) == 0 || strings.Join(first, " ") != strings.Join(second, " ") {
		t.Errorf("rules after the first install %q, after the restart %q; want one identical rule", first, second)
	}
}

// socketMarkRules counts the rules of the inet table name's prerouting
// chain in the current namespace; -1 when there is no such table.
func socketMarkRules(name string) (int, error) {
	c, err := nftables.New()
	if err != nil {
		return 0, err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return 0, err
	}
	for _, tb := range tables {
		if tb.Name != name {
			continue
		}
		rs, err := c.GetRules(tb, &nftables.Chain{Name: "prerouting", Table: tb})
		return len(rs), err
	}
	return -1, nil
}

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/conformance/netns"
	"github.com/wardproxy/ward/internal/testenv"
)

func TestBPFCleanup(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		redirect.Cleanup(dir)
		unix.Unmount(dir, unix.MNT_DETACH)
	})
	topo := netns.New(t)
	p := topo.AddPod(t, netns.PodConfig{Name: "a"})
	dp, err := redirect.Load(redirect.Config{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.AddEndpoint(redirect.Endpoint{ID: 1, IP: p.IP, IfIndex: p.HostIfIndex, Identity: 1000}); err != nil {
		t.Fatal(err)
	}
	dp.Close() // wardd exits; programs stay attached
	if n, err := redirect.AttachedPrograms(p.HostIfIndex); err != nil || n != 2 {
		t.Fatalf("AttachedPrograms after Close = %d, %v; want 2", n, err)
	}

	var out, errb bytes.Buffer
	if code := run([]string{"bpf", "counters", "-pin-dir", dir}, &out, &errb); code != 0 || !strings.Contains(out.String(), "REASON") {
		t.Fatalf("ward bpf counters = %d, %q, %q", code, out.String(), errb.String())
	}
	out.Reset()
	if code := run([]string{"bpf", "cleanup", "-pin-dir", dir, "-keep-routing"}, &out, &errb); code != 0 {
		t.Fatalf("ward bpf cleanup = %d, %s", code, errb.String())
	}
	for _, name := range []string{"ward_policy", "ward_ipcache", "links"} {
		if _, err := os.Stat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Errorf("%s survives cleanup", name)
		}
	}
	if n, err := redirect.AttachedPrograms(p.HostIfIndex); err != nil || n != 0 {
		t.Fatalf("AttachedPrograms after cleanup = %d, %v; want 0", n, err)
	}
	dp2, err := redirect.Load(redirect.Config{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer dp2.Close()
	if n := len(dp2.Endpoints()); n != 0 {
		t.Errorf("fresh load after cleanup sees %d endpoints; want 0", n)
	}
}

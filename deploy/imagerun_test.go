package deploy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/wardproxy/ward/internal/testenv"
)

// extractImage unpacks the single layer of build/ward-image.tar into a
// new directory, as a container runtime would, and returns it.
func extractImage(t *testing.T) string {
	t.Helper()
	files := readTar(t, testenv.File(t, "build/ward-image.tar", "run `make image`"))
	var idx ociIndex
	if err := json.Unmarshal(files["index.json"], &idx); err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("index.json: %v", err)
	}
	var m ociManifest
	if err := json.Unmarshal(files["blobs/sha256/"+strings.TrimPrefix(idx.Manifests[0].Digest, "sha256:")], &m); err != nil || len(m.Layers) != 1 {
		t.Fatalf("manifest: %v", err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(files["blobs/sha256/"+strings.TrimPrefix(m.Layers[0].Digest, "sha256:")]))
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return root
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(root, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, os.FileMode(h.Mode).Perm())
		case tar.TypeReg:
			var data []byte
			if data, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(p, data, os.FileMode(h.Mode).Perm())
			}
		default:
			t.Fatalf("layer entry %s of type %c", h.Name, h.Typeflag)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestImageRuns runs programs of ward's image inside its unpacked root
// (chroot, a network namespace of their own, the image's PATH), as the
// chart's pods do: the static commands start, and ip — which wardd and
// `ward bpf cleanup` run for the proxy routing — finds its loader and
// every library and installs and lists ward's routing rule.
func TestImageRuns(t *testing.T) {
	testenv.RequireRoot(t)
	root := extractImage(t)
	run := func(stdin string, args ...string) string {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = []string{"PATH=/usr/bin:/usr/sbin"}
		cmd.Dir = "/"
		cmd.Stdin = strings.NewReader(stdin)
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Cloneflags: syscall.CLONE_NEWNET}
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("%q in the image: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := run("", "/usr/bin/wardd", "-help"); !strings.Contains(out, "-envoy-external") {
		t.Errorf("wardd -help in the image:\n%s\nwant its flags", out)
	}
	if out := run("", "/usr/bin/ward"); !strings.Contains(out, "usage") {
		t.Errorf("ward in the image:\n%s\nwant its usage", out)
	}
	out := run("rule add fwmark 0x200/0xf00 lookup 2004 pref 9000\nrule list\n", "/usr/sbin/ip", "-batch", "-")
	if !strings.Contains(out, "lookup 2004") {
		t.Errorf("ip in the image:\n%s\nwant the rule added and listed", out)
	}
}

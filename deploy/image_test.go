package deploy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/wardproxy/ward/internal/testenv"
)

// The OCI image layout and image spec types the test reads (only the
// fields it checks), written out here so the check does not trust the
// library that wrote the archive (tools/image, go-containerregistry).
type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations"`
}

type ociIndex struct {
	SchemaVersion int             `json:"schemaVersion"`
	Manifests     []ociDescriptor `json:"manifests"`
}

type ociManifest struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	Config        ociDescriptor   `json:"config"`
	Layers        []ociDescriptor `json:"layers"`
}

type ociConfig struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Config       struct {
		Entrypoint []string `json:"Entrypoint"`
		Env        []string `json:"Env"`
	} `json:"config"`
	RootFS struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// imageFiles are the files of ward's image and what they must be: the
// chart runs the first three (wardd's DaemonSet, its probes, its init
// container, the cleanup), and Envoy's pod loads the library.
var imageFiles = map[string]elf.Type{
	"usr/bin/wardd":           elf.ET_EXEC,
	"usr/bin/ward":            elf.ET_EXEC,
	"usr/bin/ward-install":    elf.ET_EXEC,
	"usr/lib/ward/libward.so": elf.ET_DYN,
}

// TestImageArchive reads build/ward-image.tar (`make image`) as an OCI
// image layout: oci-layout, index.json naming the image, every blob's
// digest and size, an OCI manifest and config for linux/amd64 with wardd
// as the entrypoint, and one layer holding the binaries at the paths the
// chart uses. The three commands must be static: the image has no libc.
func TestImageArchive(t *testing.T) {
	path := testenv.File(t, "build/ward-image.tar", "run `make image`")
	files := readTar(t, path)
	var layout struct {
		Version string `json:"imageLayoutVersion"`
	}
	if err := json.Unmarshal(files["oci-layout"], &layout); err != nil || layout.Version != "1.0.0" {
		t.Fatalf("oci-layout = %q, %v; want imageLayoutVersion 1.0.0", files["oci-layout"], err)
	}
	for name, data := range files {
		if hexDigest, ok := strings.CutPrefix(name, "blobs/sha256/"); ok {
			if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != hexDigest {
				t.Errorf("blob %s has digest %x", name, sum)
			}
		}
	}
	blob := func(d ociDescriptor) []byte {
		t.Helper()
		data, ok := files["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
		if !ok || !strings.HasPrefix(d.Digest, "sha256:") || int64(len(data)) != d.Size {
			t.Fatalf("descriptor %+v: blob missing or of another size (%d bytes)", d, len(data))
		}
		return data
	}
	var idx ociIndex
	if err := json.Unmarshal(files["index.json"], &idx); err != nil || idx.SchemaVersion != 2 || len(idx.Manifests) != 1 {
		t.Fatalf("index.json = %s, %v; want schemaVersion 2 and one manifest", files["index.json"], err)
	}
	md := idx.Manifests[0]
	if md.MediaType != "application/vnd.oci.image.manifest.v1+json" || md.Annotations["org.opencontainers.image.ref.name"] == "" {
		t.Errorf("index manifest = %+v; want an OCI manifest with a ref.name annotation", md)
	}
	var m ociManifest
	if err := json.Unmarshal(blob(md), &m); err != nil {
		t.Fatal(err)
	}
	if m.SchemaVersion != 2 || m.Config.MediaType != "application/vnd.oci.image.config.v1+json" || len(m.Layers) != 1 {
		t.Fatalf("manifest = %+v; want schema 2, an OCI config, one layer", m)
	}
	var cfg ociConfig
	if err := json.Unmarshal(blob(m.Config), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Architecture != "amd64" || cfg.OS != "linux" || strings.Join(cfg.Config.Entrypoint, " ") != "/usr/bin/wardd" {
		t.Errorf("config = %+v; want linux/amd64 with entrypoint /usr/bin/wardd", cfg)
	}
	l := m.Layers[0]
	if l.MediaType != "application/vnd.oci.image.layer.v1.tar+gzip" {
		t.Errorf("layer media type = %q; want OCI tar+gzip", l.MediaType)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob(l)))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(raw); len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != "sha256:"+hex.EncodeToString(sum[:]) {
		t.Errorf("rootfs diff_ids = %q; want the uncompressed layer's digest sha256:%x", cfg.RootFS.DiffIDs, sum)
	}
	layer := readTarBytes(t, raw)
	if cfg.Config.Env == nil || !slices.Contains(cfg.Config.Env, "PATH=/usr/bin:/usr/sbin") {
		t.Errorf("config env = %q; want PATH=/usr/bin:/usr/sbin (wardd runs ip)", cfg.Config.Env)
	}
	if _, ok := layer["usr/sbin/ip"]; !ok {
		t.Error("layer has no usr/sbin/ip (wardd and ward bpf cleanup run it for the proxy routing)")
	}
	for name, typ := range imageFiles {
		data, ok := layer[name]
		if !ok {
			t.Errorf("layer has no %s", name)
			continue
		}
		f, err := elf.NewFile(bytes.NewReader(data))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if f.Type != typ || f.Machine != elf.EM_X86_64 {
			t.Errorf("%s: ELF type %v machine %v; want %v x86-64", name, f.Type, f.Machine, typ)
		}
		if typ == elf.ET_EXEC {
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP {
					t.Errorf("%s is dynamically linked; the image has no libc: build it with CGO_ENABLED=0", name)
				}
			}
		}
	}
}

func readTar(t *testing.T, path string) map[string][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return readTarBytes(t, b)
}

// readTarBytes returns the regular files of a tar by name.
func readTarBytes(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("tar: %v", err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("tar %s: %v", h.Name, err)
		}
		out[strings.TrimPrefix(h.Name, "./")] = data
	}
}

// envoyImageGlibc is the glibc of the official envoyproxy/envoy:v1.40.0
// image (deploy/helm/ward/values.yaml envoy.image): envoyproxy/envoy's
// distribution/docker/Dockerfile-envoy builds the "envoy" stage FROM
// ubuntu:22.04 (ARG BUILD_OS=ubuntu, BUILD_TAG=22.04), whose libc6 is
// glibc 2.35. (The distroless variant is Debian 12: 2.36.)
var envoyImageGlibc = [2]int{2, 35}

// TestLibwardGlibc: build/libward.so asks for no GLIBC_ symbol version
// newer than the Envoy image's glibc, or the dynamic loader refuses it
// there ("version `GLIBC_2.xx' not found") although it loads on the build
// machine (Debian 12, glibc 2.36).
func TestLibwardGlibc(t *testing.T) {
	path := testenv.File(t, "build/libward.so", "run `make build`")
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	max, err := maxGlibc(f)
	if err != nil {
		t.Fatal(err)
	}
	if newer(max, envoyImageGlibc) {
		t.Errorf("libward.so needs GLIBC_%d.%d; the Envoy image has glibc %d.%d: build it against an older glibc or avoid the symbol", max[0], max[1], envoyImageGlibc[0], envoyImageGlibc[1])
	}
	t.Logf("libward.so needs glibc %d.%d at most; the Envoy image has %d.%d", max[0], max[1], envoyImageGlibc[0], envoyImageGlibc[1])
}

// maxGlibc is the newest GLIBC_x.y version among f's imported symbols.
func maxGlibc(f *elf.File) ([2]int, error) {
	syms, err := f.DynamicSymbols()
	if err != nil {
		return [2]int{}, fmt.Errorf("dynamic symbols: %w", err)
	}
	var max [2]int
	for _, s := range syms {
		v, ok := strings.CutPrefix(s.Version, "GLIBC_")
		if !ok || s.Section != elf.SHN_UNDEF {
			continue
		}
		major, minor, _ := strings.Cut(v, ".")
		minor, _, _ = strings.Cut(minor, ".") // GLIBC_2.3.2
		a, err1 := strconv.Atoi(major)
		b, err2 := strconv.Atoi(minor)
		if err1 != nil || err2 != nil {
			return [2]int{}, fmt.Errorf("symbol %s: version %q", s.Name, s.Version)
		}
		if newer([2]int{a, b}, max) {
			max = [2]int{a, b}
		}
	}
	return max, nil
}

func newer(a, b [2]int) bool { return a[0] > b[0] || a[0] == b[0] && a[1] > b[1] }

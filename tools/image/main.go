// Command image builds ward's container image without a container daemon:
// the given files in one layer on an empty base (FROM scratch), written as
// an OCI image layout packed in a tar (an "oci-archive"), reproducibly
// (fixed timestamps and ownership). `make image` runs it; docs/kubernetes.md
// says how to load or push the result.
//
//	image -out FILE -ref NAME:TAG [-arch amd64] [-entrypoint PATH] PATH_IN_IMAGE=FILE...
//
// The base is empty on purpose: wardd, ward and ward-install are static Go
// binaries, libward.so runs inside Envoy's image, not this one, and the one
// foreign program wardd runs (ip, for the proxy routing) comes with exactly
// the shared libraries it loads (`make image` lists them with ldd).
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fl := flag.NewFlagSet("image", flag.ContinueOnError)
	out := fl.String("out", "", "the OCI archive to write")
	ref := fl.String("ref", "", "the image name and tag (org.opencontainers.image.ref.name)")
	arch := fl.String("arch", "amd64", "the image's architecture")
	entry := fl.String("entrypoint", "/usr/bin/wardd", "the image's entrypoint")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if *out == "" || *ref == "" || fl.NArg() == 0 {
		return fmt.Errorf("usage: image -out FILE -ref NAME:TAG PATH_IN_IMAGE=FILE...")
	}
	files := map[string]string{}
	for _, a := range fl.Args() {
		dst, src, ok := strings.Cut(a, "=")
		if !ok || !path.IsAbs(dst) {
			return fmt.Errorf("%q: want /path/in/image=file", a)
		}
		files[path.Clean(dst)] = src
	}
	layerTar, err := layerOf(files)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		return fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = *arch, "linux"
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config.Entrypoint = []string{*entry}
	cf.Config.Env = []string{"PATH=/usr/bin:/usr/sbin"}
	cf.Config.Labels = map[string]string{"org.opencontainers.image.source": "https://github.com/wardproxy/ward"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	dir, err := os.MkdirTemp("", "ward-image-")
	if err != nil {
		return fmt.Errorf("layout dir: %w", err)
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("write layout: %w", err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": *ref})); err != nil {
		return fmt.Errorf("write image: %w", err)
	}
	return tarDir(dir, *out)
}

// layerOf is a tar of files (path in image -> file on disk) with their
// parent directories, root-owned, timestamps at the epoch.
func layerOf(files map[string]string) ([]byte, error) {
	dirs := map[string]bool{}
	for dst := range files {
		for d := path.Dir(dst); d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	var names []string
	for d := range dirs {
		names = append(names, d)
	}
	for f := range files {
		names = append(names, f)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		h := &tar.Header{Name: strings.TrimPrefix(n, "/"), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if dirs[n] {
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, h.Name+"/", 0o755
			if err := tw.WriteHeader(h); err != nil {
				return nil, fmt.Errorf("layer: %w", err)
			}
			continue
		}
		data, err := os.ReadFile(files[n])
		if err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
		st, err := os.Stat(files[n])
		if err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
		h.Typeflag, h.Mode, h.Size = tar.TypeReg, int64(st.Mode().Perm()), int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
		if _, err := tw.Write(data); err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return buf.Bytes(), nil
}

// tarDir packs the layout directory into out (sorted, epoch timestamps),
// replacing out by rename.
func tarDir(dir, out string) error {
	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		h := &tar.Header{Name: filepath.ToSlash(rel), ModTime: time.Unix(0, 0), Mode: 0o644, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if d.IsDir() {
			h.Name, h.Mode, h.Typeflag = h.Name+"/", 0o755, tar.TypeDir
			return tw.WriteHeader(h)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		h.Size = int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("archive %s: %w", out, err)
	}
	if err := os.Rename(tmp, out); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	return nil
}

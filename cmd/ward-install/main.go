// Command ward-install copies files into a directory by rename: each file
// is written to a temporary name in the destination, synced, and renamed
// over the old one. The Kubernetes chart's wardd pod runs it (an init
// container) to hand libward.so to the Envoy pod through a host path: a
// running Envoy has the old library mapped, and overwriting that file in
// place would change the code under it; a rename leaves the old inode to
// whoever has it open, and the next Envoy loads the new file.
//
//	ward-install --dest DIR FILE...
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("ward-install", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dest := fs.String("dest", "", "destination directory (created if missing)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dest == "" || fs.NArg() == 0 {
		fmt.Fprintln(stderr, "usage: ward-install --dest DIR FILE...")
		return 2
	}
	for _, f := range fs.Args() {
		if err := install(f, *dest); err != nil {
			fmt.Fprintf(stderr, "ward-install: %v\n", err)
			return 1
		}
	}
	return 0
}

// install copies src into dir under its base name, replacing an existing
// file by rename, with src's permission bits.
func install(src, dir string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open source: %w", err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return fmt.Errorf("stat source: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", src)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create destination: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(src)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create temporary file: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, os.Remove(tmp.Name()))
		}
	}()
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := tmp.Chmod(st.Mode().Perm()); err != nil {
		tmp.Close()
		return fmt.Errorf("chmod: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, filepath.Base(src))); err != nil {
		return fmt.Errorf("rename into place: %w", err)
	}
	return nil
}

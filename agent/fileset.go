package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"

	"sigs.k8s.io/yaml"

	"github.com/wardproxy/ward/agent/api"
	"github.com/wardproxy/ward/policy/dirsource"
)

// fileSet is a watched directory of YAML or JSON files each holding one T
// or a list of them (unknown fields are errors). A file that fails keeps
// its last valid items; an unreadable directory changes nothing.
type fileSet[T any] struct {
	dir string

	mu    sync.Mutex
	files map[string][]byte // last content read, by path
	good  map[string][]T    // last valid items, by path
	errs  map[string]error  // by path
}

// scan reads the directory once; it reports whether any file changed.
func (f *fileSet[T]) scan() (bool, error) {
	paths, err := dirsource.Files(f.dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("directory %s: %w (what is in force is kept)", f.dir, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.files == nil {
		f.files, f.good, f.errs = map[string][]byte{}, map[string][]T{}, map[string]error{}
	}
	dirty := false
	seen := map[string]bool{}
	for _, p := range paths {
		seen[p] = true
		b, err := os.ReadFile(p)
		if err != nil {
			continue // removed meanwhile: next scan
		}
		if old, ok := f.files[p]; ok && bytes.Equal(old, b) {
			continue
		}
		f.files[p] = b
		dirty = true
		items, err := parseItems[T](b)
		if err != nil {
			f.errs[p] = fmt.Errorf("%s: %w", p, err)
			continue
		}
		delete(f.errs, p)
		f.good[p] = items
	}
	for p := range f.files {
		if !seen[p] {
			delete(f.files, p)
			delete(f.good, p)
			delete(f.errs, p)
			dirty = true
		}
	}
	return dirty, nil
}

// each calls fn for every valid file's items, in path order; an error fn
// returns is recorded against the file (its items stay applied as fn
// decided).
func (f *fileSet[T]) each(fn func(path string, items []T) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range sortedKeys(f.good) {
		if err := fn(p, f.good[p]); err != nil && f.errs[p] == nil {
			f.errs[p] = fmt.Errorf("%s: %w", p, err)
		}
	}
}

func (f *fileSet[T]) err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for _, p := range sortedKeys(f.errs) {
		errs = append(errs, f.errs[p])
	}
	return errors.Join(errs...)
}

// status is the files that failed, for Status.
func (f *fileSet[T]) status() []api.FileError {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []api.FileError
	for _, p := range sortedKeys(f.errs) {
		out = append(out, api.FileError{File: p, Error: f.errs[p].Error()})
	}
	return out
}

// parseItems reads one file: an item or a list of them.
func parseItems[T any](b []byte) ([]T, error) {
	js, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, err
	}
	js = bytes.TrimSpace(js)
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if len(js) > 0 && js[0] == '[' {
		var items []T
		if err := dec.Decode(&items); err != nil {
			return nil, err
		}
		return items, nil
	}
	var item T
	if err := dec.Decode(&item); err != nil {
		return nil, err
	}
	return []T{item}, nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

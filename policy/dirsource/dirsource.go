// Package dirsource feeds policies from a directory into a policy
// repository, like Cilium's static-cnp-path: every *.yaml, *.yml and *.json
// file (except *.flows.json) holds CiliumNetworkPolicy or
// CiliumClusterwideNetworkPolicy objects; adding, editing and deleting files
// adds, updates and removes their policies. A file that fails to parse or
// validate is reported and skipped: the policies it held before stay in
// force (an editor's half-written save does not open or close traffic), and
// every other file is unaffected.
//
// The directory is polled (modification time and size, then content); no
// inotify dependency.
package dirsource

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/wardproxy/ward/policy"
)

// Sink receives policy changes; *policy.Repository implements it.
type Sink interface {
	Upsert(p *policy.Policy)
	Delete(k policy.Key) bool
}

var _ Sink = (*policy.Repository)(nil)

// Source watches Dir. The zero value is not usable: set Dir and Sink.
type Source struct {
	Dir  string
	Sink Sink
	// Interval between scans in Run; default 1s.
	Interval time.Duration
	// Logger; default slog.Default().
	Logger *slog.Logger
	// OnChange, if set, is called after a scan that changed the policies.
	OnChange func()
	// Features are the agent options gated constructs need; a policy
	// using one that is off is refused (policy.CheckFeatures).
	Features policy.Features

	mu      sync.Mutex
	files   map[string]*fileState
	owner   map[policy.Key]string
	lastErr error // of the last scan: nil when every file is in force as is
}

type fileState struct {
	mod  time.Time
	size int64
	data []byte
	keys []policy.Key
	err  error
}

// FileStatus is the state of one file after the last scan.
type FileStatus struct {
	Path     string
	Policies []policy.Key
	Err      error // nil when the file is in force as is
}

// Run scans every Interval until ctx is done. It returns ctx.Err().
func (s *Source) Run(ctx context.Context) error {
	iv := s.Interval
	if iv <= 0 {
		iv = time.Second
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	last := ""
	for {
		// Logged once per change of the errors, not once per scan.
		err := s.Sync()
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		if msg != last {
			if err != nil {
				s.logger().Warn("policy directory scan", "dir", s.Dir, "error", err)
			} else {
				s.logger().Info("policy directory in force as is", "dir", s.Dir)
			}
			last = msg
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (s *Source) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// Sync scans the directory once and applies the changes, then calls
// OnChange (without holding the source's lock: OnChange may call Good or
// Status) when the policies changed. It returns the joined errors of the
// files that were skipped in this scan.
func (s *Source) Sync() error {
	changed, err := s.scan()
	if changed && s.OnChange != nil {
		s.OnChange()
	}
	return err
}

func (s *Source) scan() (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.files == nil {
		s.files = map[string]*fileState{}
		s.owner = map[policy.Key]string{}
	}
	paths, err := Files(s.Dir)
	if err != nil {
		// An unreadable or missing directory changes nothing: what is in
		// force stays (a missing directory must not un-enforce everything).
		s.lastErr = fmt.Errorf("policy directory %s: %w (the policies in force are kept)", s.Dir, err)
		return false, s.lastErr
	}
	changed := false
	seen := map[string]bool{}
	var errs []error
	for _, p := range paths {
		seen[p] = true
		st, err := os.Stat(p)
		if err != nil {
			continue // removed meanwhile; handled next scan
		}
		fsState := s.files[p]
		if fsState != nil && fsState.mod.Equal(st.ModTime()) && fsState.size == st.Size() {
			if fsState.err != nil {
				errs = append(errs, fsState.err)
			}
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
			continue
		}
		if fsState == nil {
			fsState = &fileState{}
			s.files[p] = fsState
		}
		fsState.mod, fsState.size = st.ModTime(), st.Size()
		if fsState.data != nil && bytes.Equal(fsState.data, data) && fsState.err == nil {
			continue
		}
		fsState.data = data
		if s.apply(p, fsState, data) {
			changed = true
		}
		if fsState.err != nil {
			errs = append(errs, fsState.err)
		}
	}
	for p, fsState := range s.files {
		if seen[p] {
			continue
		}
		for _, k := range fsState.keys {
			if s.owner[k] == p {
				s.Sink.Delete(k)
				delete(s.owner, k)
				changed = true
			}
		}
		delete(s.files, p)
		s.logger().Info("policy file removed", "file", p)
	}
	s.lastErr = errors.Join(errs...)
	return changed, s.lastErr
}

// Restore seeds the source with files saved from an earlier run (Good),
// before the first Sync: their policies go into the sink as if the files
// were on disk. The first Sync then replaces each with its content on disk
// when that is valid, keeps the restored version when the file on disk
// fails to parse or validate, and removes it when the file is gone from a
// readable directory. Paths are relative to Dir. It returns the errors of
// restored files that no longer parse (skipped).
func (s *Source) Restore(files map[string][]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.files == nil {
		s.files = map[string]*fileState{}
		s.owner = map[policy.Key]string{}
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var errs []error
	for _, n := range names {
		p := filepath.Join(s.Dir, filepath.Clean("/" + n)[1:])
		st := &fileState{size: -1} // never equal to a file on disk: re-read
		s.apply(p, st, files[n])
		if st.err != nil {
			errs = append(errs, st.err)
			continue
		}
		st.data = files[n]
		s.files[p] = st
	}
	return errors.Join(errs...)
}

// Good returns the content of every policy file, by path relative to Dir,
// when the last scan found every file valid (the set to Restore after a
// restart), and false otherwise.
func (s *Source) Good() (map[string][]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.files == nil || s.lastErr != nil {
		return nil, false
	}
	out := make(map[string][]byte, len(s.files))
	for p, st := range s.files {
		if st.err != nil {
			return nil, false
		}
		rel, err := filepath.Rel(s.Dir, p)
		if err != nil {
			return nil, false
		}
		out[rel] = st.data
	}
	return out, true
}

// Err returns the error of the last scan (nil: every file in force as is).
func (s *Source) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// apply parses one changed file and updates the sink.
func (s *Source) apply(path string, st *fileState, data []byte) bool {
	ps, err := policy.Parse(filepath.Base(path), data)
	if err == nil {
		for _, p := range ps {
			err = errors.Join(err, p.CheckFeatures(s.Features))
			if o, ok := s.owner[p.Key()]; ok && o != path {
				err = errors.Join(err, &policy.FieldError{File: filepath.Base(path), Policy: p.Metadata.Name,
					Msg: fmt.Sprintf("policy %s is already defined in %s", p.Key(), o)})
			}
		}
	}
	if err != nil {
		st.err = err
		s.logger().Warn("policy file skipped", "file", path, "error", err)
		return false
	}
	st.err = nil
	newKeys := map[policy.Key]bool{}
	for _, p := range ps {
		for _, w := range p.Warnings {
			s.logger().Warn("policy warning", "file", path, "warning", w.Error())
		}
		s.Sink.Upsert(p)
		s.owner[p.Key()] = path
		newKeys[p.Key()] = true
	}
	for _, k := range st.keys {
		if !newKeys[k] && s.owner[k] == path {
			s.Sink.Delete(k)
			delete(s.owner, k)
		}
	}
	st.keys = st.keys[:0]
	for _, p := range ps {
		st.keys = append(st.keys, p.Key())
	}
	s.logger().Info("policy file applied", "file", path, "policies", len(ps))
	return true
}

// Status returns the state of every file after the last scan, by path.
func (s *Source) Status() []FileStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]FileStatus, 0, len(s.files))
	for p, st := range s.files {
		out = append(out, FileStatus{Path: p, Policies: append([]policy.Key(nil), st.keys...), Err: st.err})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// IsPolicyFile reports whether name has a policy file extension: .yaml,
// .yml or .json, but not .flows.json (a `ward policy test` flows file).
func IsPolicyFile(name string) bool {
	if strings.HasSuffix(name, ".flows.json") || strings.HasPrefix(filepath.Base(name), ".") {
		return false
	}
	switch filepath.Ext(name) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// Files returns the policy files of path: path itself when it is a file,
// otherwise every policy file below it (recursively), sorted.
func Files(path string) ([]string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return []string{path}, nil
	}
	var out []string
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != path && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		if IsPolicyFile(p) {
			out = append(out, p)
		}
		return nil
	})
	sort.Strings(out)
	return out, err
}

// Load parses every policy file of the paths (files or directories). It
// returns the policies of the files that are valid and the joined errors of
// the others.
func Load(paths ...string) ([]*policy.Policy, error) {
	var out []*policy.Policy
	var errs []error
	seen := map[policy.Key]string{}
	for _, path := range paths {
		files, err := Files(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			ps, err := policy.Parse(f, data)
			for _, p := range ps {
				if prev, dup := seen[p.Key()]; dup && err == nil {
					err = &policy.FieldError{File: f, Policy: p.Metadata.Name,
						Msg: fmt.Sprintf("policy %s is already defined in %s", p.Key(), prev)}
				}
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, p := range ps {
				seen[p.Key()] = f
			}
			out = append(out, ps...)
		}
	}
	return out, errors.Join(errs...)
}

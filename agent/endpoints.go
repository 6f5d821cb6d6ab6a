package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/wardproxy/ward/agent/api"
	"github.com/wardproxy/ward/policy/dirsource"
)

// endpointSource watches the endpoints directory: the node's workloads are
// the configuration's Endpoints plus every endpoint of the directory's
// files. Each scan hands the union to the engine, which upserts what is new
// or changed and deletes what is gone; then the node publishes.
type endpointSource struct {
	dir      string
	static   []Endpoint
	datapath bool
	eng      *engine
	log      *slog.Logger
	onChange func() // after the engine's endpoints changed

	mu    sync.Mutex
	files map[string][]byte     // last content read, by path
	good  map[string][]Endpoint // last valid endpoints, by path
	errs  map[string]error      // by path
}

// scan reads the directory once and applies the endpoints. A file that
// fails keeps its last valid endpoints; an unreadable directory changes
// nothing.
func (s *endpointSource) scan() error {
	paths, err := dirsource.Files(s.dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("endpoints directory %s: %w (the endpoints in force are kept)", s.dir, err)
	}
	s.mu.Lock()
	if s.files == nil {
		s.files, s.good, s.errs = map[string][]byte{}, map[string][]Endpoint{}, map[string]error{}
	}
	dirty := false
	seen := map[string]bool{}
	for _, p := range paths {
		seen[p] = true
		b, err := os.ReadFile(p)
		if err != nil {
			continue // removed meanwhile: next scan
		}
		if old, ok := s.files[p]; ok && bytes.Equal(old, b) {
			continue
		}
		s.files[p] = b
		dirty = true
		eps, err := parseEndpoints(b)
		if err != nil {
			s.errs[p] = fmt.Errorf("%s: %w", p, err)
			continue
		}
		delete(s.errs, p)
		s.good[p] = eps
	}
	for p := range s.files {
		if !seen[p] {
			delete(s.files, p)
			delete(s.good, p)
			delete(s.errs, p)
			dirty = true
		}
	}
	if !dirty {
		s.mu.Unlock()
		return s.err()
	}
	// The union, validated as a whole (ids unique across files); an
	// endpoint that fails is reported under its file and left out.
	ids := map[uint64]string{}
	var all []Endpoint
	for i, ep := range s.static {
		if len(validateEndpoint(ep, fmt.Sprintf("endpoints[%d]", i), s.datapath, ids)) == 0 {
			all = append(all, ep)
		}
	}
	for _, p := range sortedKeys(s.good) {
		var ferrs []error
		for i, ep := range s.good[p] {
			if errs := validateEndpoint(ep, fmt.Sprintf("%s: [%d]", filepath.Base(p), i), s.datapath, ids); len(errs) > 0 {
				ferrs = append(ferrs, errs...)
				continue
			}
			all = append(all, ep)
		}
		if len(ferrs) > 0 && s.errs[p] == nil {
			s.errs[p] = errors.Join(ferrs...)
		}
	}
	s.mu.Unlock()
	changed, err := s.eng.setEndpoints(all, "endpoints")
	if err != nil {
		s.log.Warn("endpoints", "error", err)
	}
	if changed && s.onChange != nil {
		s.onChange()
	}
	return s.err()
}

func (s *endpointSource) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, p := range sortedKeys(s.errs) {
		errs = append(errs, s.errs[p])
	}
	return errors.Join(errs...)
}

// status is the endpoint files that failed, for Status.
func (s *endpointSource) status() []api.FileError {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []api.FileError
	for _, p := range sortedKeys(s.errs) {
		out = append(out, api.FileError{File: p, Error: s.errs[p].Error()})
	}
	return out
}

// run scans every interval until ctx is done, logging errors once per
// change.
func (s *endpointSource) run(ctx context.Context, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	last := ""
	for {
		msg := ""
		if err := s.scan(); err != nil {
			msg = err.Error()
		}
		if msg != last {
			if msg != "" {
				s.log.Warn("endpoints directory", "dir", s.dir, "error", msg)
			}
			last = msg
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// parseEndpoints reads one endpoint file: an endpoint or a list of them
// (YAML or JSON; unknown fields are errors).
func parseEndpoints(b []byte) ([]Endpoint, error) {
	js, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, err
	}
	js = bytes.TrimSpace(js)
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if len(js) > 0 && js[0] == '[' {
		var eps []Endpoint
		if err := dec.Decode(&eps); err != nil {
			return nil, err
		}
		return eps, nil
	}
	var ep Endpoint
	if err := dec.Decode(&ep); err != nil {
		return nil, err
	}
	return []Endpoint{ep}, nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"
)

// endpointSource watches the endpoints directory: the node's workloads are
// the configuration's Endpoints plus every endpoint of the directory's
// files. Each scan that changed a file hands the union to the engine,
// which upserts what is new or changed and deletes what is gone; then the
// node publishes.
type endpointSource struct {
	files    fileSet[Endpoint]
	static   []Endpoint
	datapath bool
	eng      *engine
	log      *slog.Logger
	onChange func() // after the engine's endpoints changed
}

func newEndpointSource(dir string, static []Endpoint, datapath bool, eng *engine, log *slog.Logger) *endpointSource {
	return &endpointSource{files: fileSet[Endpoint]{dir: dir}, static: static, datapath: datapath, eng: eng, log: log}
}

// scan reads the directory once and applies the endpoints. The union is
// validated as a whole (ids unique across files); an endpoint that fails
// is reported under its file and left out.
func (s *endpointSource) scan() error {
	dirty, err := s.files.scan()
	if err != nil || !dirty {
		return errors.Join(err, s.files.err())
	}
	ids := map[uint64]string{}
	var all []Endpoint
	for i, ep := range s.static {
		if len(validateEndpoint(ep, fmt.Sprintf("endpoints[%d]", i), s.datapath, ids)) == 0 {
			all = append(all, ep)
		}
	}
	s.files.each(func(p string, eps []Endpoint) error {
		var errs []error
		for i, ep := range eps {
			if verrs := validateEndpoint(ep, fmt.Sprintf("%s[%d]", filepath.Base(p), i), s.datapath, ids); len(verrs) > 0 {
				errs = append(errs, verrs...)
				continue
			}
			all = append(all, ep)
		}
		return errors.Join(errs...)
	})
	changed, err := s.eng.setEndpoints(sourceConfig, all, "endpoints")
	if err != nil {
		s.log.Warn("endpoints", "error", err)
	}
	if changed && s.onChange != nil {
		s.onChange()
	}
	return s.files.err()
}

// run scans every interval until ctx is done (see runScans).
func (s *endpointSource) run(ctx context.Context, every time.Duration) error {
	return runScans(ctx, every, s.scan, s.log, "endpoints directory", s.files.dir)
}

// runScans calls scan every interval until ctx is done, logging its error
// once per change.
func runScans(ctx context.Context, every time.Duration, scan func() error, log *slog.Logger, what, dir string) error {
	t := time.NewTicker(every)
	defer t.Stop()
	last := ""
	for {
		msg := ""
		if err := scan(); err != nil {
			msg = err.Error()
		}
		if msg != last {
			if msg != "" {
				log.Warn(what, "dir", dir, "error", msg)
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

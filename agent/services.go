package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"time"

	"github.com/wardproxy/ward/policy"
)

// Service is a Kubernetes-style service in embedded mode, for toServices:
// a service with a selector selects the endpoints whose labels match it
// (in its namespace); one without a selector stands for its Addresses
// (the endpoints of a selector-less Kubernetes service, e.g. a database
// outside the cluster).
type Service struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace,omitempty"` // default "default"
	Labels    map[string]string `json:"labels,omitempty"`
	Selector  map[string]string `json:"selector,omitempty"`
	// Addresses are IPs or CIDRs; only without a selector.
	Addresses []string `json:"addresses,omitempty"`
}

// info converts a validated service.
func (s Service) info() policy.ServiceInfo {
	ns := s.Namespace
	if ns == "" {
		ns = "default"
	}
	si := policy.ServiceInfo{Name: s.Name, Namespace: ns, Labels: s.Labels, Selector: s.Selector}
	for _, a := range s.Addresses {
		p, err := parseAddrOrPrefix(a)
		if err == nil {
			si.Prefixes = append(si.Prefixes, p)
		}
	}
	return si
}

// validateService checks one service; seen holds the namespace/names seen
// so far and where.
func validateService(s Service, p string, seen map[string]string) []error {
	var errs []error
	if s.Name == "" {
		errs = append(errs, fmt.Errorf("%s.name is required", p))
	}
	key := s.info().Namespace + "/" + s.Name
	if prev, ok := seen[key]; ok {
		errs = append(errs, fmt.Errorf("%s: service %s is already defined by %s", p, key, prev))
	} else {
		seen[key] = p
	}
	if len(s.Selector) > 0 && len(s.Addresses) > 0 {
		errs = append(errs, fmt.Errorf("%s: selector and addresses are exclusive (a service with a selector has the selected endpoints as backends)", p))
	}
	for i, a := range s.Addresses {
		if _, err := parseAddrOrPrefix(a); err != nil {
			errs = append(errs, fmt.Errorf("%s.addresses[%d]: %w", p, i, err))
		}
	}
	return errs
}

// setServices makes svcs (validated) the services of source and the
// node's services the union of every source's (an earlier source's
// namespace/name wins; the later one is an error in the status),
// upserting new and changed ones and deleting gone ones. It reports
// whether anything changed.
func (e *engine) setServices(source string, svcs []Service) bool {
	e.svcMu.Lock()
	defer e.svcMu.Unlock()
	e.svcSrc[source] = svcs
	next := map[string]policy.ServiceInfo{}
	from := map[string]string{}
	var errs []error
	for _, src := range slices.Sorted(maps.Keys(e.svcSrc)) {
		for _, s := range e.svcSrc[src] {
			si := s.info()
			k := si.Namespace + "/" + si.Name
			if prev, ok := from[k]; ok {
				errs = append(errs, fmt.Errorf("%s service %s: already defined by %s", src, k, prev))
				continue
			}
			next[k], from[k] = si, src
		}
	}
	e.setSourceErr("services", errors.Join(errs...))
	changed := false
	for k, si := range next {
		if old, ok := e.services[k]; ok && sameService(old, si) {
			continue
		}
		e.repo.UpsertService(si)
		changed = true
	}
	for k, old := range e.services {
		if _, ok := next[k]; !ok {
			e.repo.DeleteService(old.Namespace, old.Name)
			changed = true
		}
	}
	e.services = next
	return changed
}

func sameService(a, b policy.ServiceInfo) bool {
	return maps.Equal(a.Labels, b.Labels) && maps.Equal(a.Selector, b.Selector) && slices.Equal(a.Prefixes, b.Prefixes)
}

// serviceSource watches the services directory beside the configuration's
// services.
type serviceSource struct {
	files    fileSet[Service]
	static   []Service
	eng      *engine
	log      *slog.Logger
	onChange func()
}

func newServiceSource(dir string, static []Service, eng *engine, log *slog.Logger) *serviceSource {
	return &serviceSource{files: fileSet[Service]{dir: dir}, static: static, eng: eng, log: log}
}

// scan reads the directory once and applies the union of the services.
func (s *serviceSource) scan() error {
	dirty, err := s.files.scan()
	if err != nil || !dirty {
		return errors.Join(err, s.files.err())
	}
	seen := map[string]string{}
	var all []Service
	for i, svc := range s.static {
		if len(validateService(svc, fmt.Sprintf("services[%d]", i), seen)) == 0 {
			all = append(all, svc)
		}
	}
	s.files.each(func(p string, svcs []Service) error {
		var errs []error
		for i, svc := range svcs {
			if verrs := validateService(svc, fmt.Sprintf("%s[%d]", filepath.Base(p), i), seen); len(verrs) > 0 {
				errs = append(errs, verrs...)
				continue
			}
			all = append(all, svc)
		}
		return errors.Join(errs...)
	})
	if s.eng.setServices(sourceConfig, all) && s.onChange != nil {
		s.onChange()
	}
	return s.files.err()
}

func (s *serviceSource) run(ctx context.Context, every time.Duration) error {
	return runScans(ctx, every, s.scan, s.log, "services directory", s.files.dir)
}

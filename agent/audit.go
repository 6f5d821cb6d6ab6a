package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/wardproxy/ward/agent/api"
)

// Policy audit mode (Cilium's policy-audit-mode and the endpoint option
// PolicyAuditMode): an endpoint in audit mode lets what its policy would
// drop pass, and every such flow is recorded with verdict AUDIT — by the
// BPF datapath at L3/L4 (the endpoint entry's audit flag), by ward.http,
// ward.kafka and the generic parsers at L7 and by the DNS proxy (the endpoint's policy
// resource carries the flag). The node config's policyAuditMode is every
// endpoint's default; `ward endpoint config ID audit=on|off` overrides it
// for one endpoint for as long as the endpoint exists: the override is
// saved in the state directory (endpoint-audit.json) and restored when
// wardd restarts, as Cilium restores an endpoint's options; it is dropped
// when the endpoint leaves. Turning it on or off changes that endpoint's
// resolved policy only, so only its BPF entry and its policy resource are
// rewritten.

// auditModes is the audit mode of each endpoint: the node's default and
// the runtime overrides. Guarded by engine.wlMu.
type auditModes struct {
	def       bool
	overrides map[uint64]bool
	path      string // where overrides are saved; "": not saved
}

// auditFile is the overrides' file in the state directory.
const auditFile = "endpoint-audit.json"

// loadAuditModes reads the overrides saved in dir (none: an empty set). A
// file that cannot be read is an error naming it: wardd does not start
// with an endpoint's mode silently changed.
func loadAuditModes(def bool, dir string) (auditModes, error) {
	m := auditModes{def: def, overrides: map[uint64]bool{}}
	if dir == "" {
		return m, nil
	}
	m.path = filepath.Join(dir, auditFile)
	b, err := os.ReadFile(m.path)
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err == nil {
		err = json.Unmarshal(b, &m.overrides)
	}
	if err != nil {
		return m, fmt.Errorf("endpoint audit overrides %s (delete it to start with policyAuditMode for every endpoint): %w", m.path, err)
	}
	if m.overrides == nil { // the file held null
		m.overrides = map[uint64]bool{}
	}
	return m, nil
}

// save writes the overrides (atomically, 0600).
func (m *auditModes) save() error {
	if m.path == "" {
		return nil
	}
	b, err := json.Marshal(m.overrides)
	if err != nil {
		return err
	}
	tmp := m.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, m.path)
}

// forgetAudit drops the overrides of endpoints gone from the node and saves
// the rest; a failed save is logged (the next change saves again).
func (e *engine) forgetAudit(gone []uint64) {
	n := 0
	for _, id := range gone {
		if _, ok := e.audit.overrides[id]; ok {
			delete(e.audit.overrides, id)
			n++
		}
	}
	if n == 0 {
		return
	}
	if err := e.audit.save(); err != nil && e.log != nil {
		e.log.Warn("endpoint audit overrides not saved", "path", e.audit.path, "error", err)
	}
}

// auditOf is endpoint id's audit mode. Called with e.wlMu.
func (e *engine) auditOf(id uint64) bool {
	if on, ok := e.audit.overrides[id]; ok {
		return on
	}
	return e.audit.def
}

// errNoEndpoint: no local endpoint has the id.
var errNoEndpoint = errors.New("no such local endpoint")

// setAudit sets endpoint id's audit mode and registers the endpoint again
// with it; the caller publishes.
func (e *engine) setAudit(id uint64, on bool) error {
	e.wlMu.Lock()
	defer e.wlMu.Unlock()
	w, ok := e.wl.Load().byID[id]
	if !ok || w.Remote {
		return fmt.Errorf("endpoint %d: %w", id, errNoEndpoint)
	}
	for _, src := range slices.Sorted(maps.Keys(e.epSrc)) {
		if src != w.source {
			continue
		}
		for _, ep := range e.epSrc[src] {
			if ep.ID != id {
				continue
			}
			reg, err := workloadOf(ep)
			if err != nil {
				return fmt.Errorf("endpoint %d: %w", id, err)
			}
			// Saved first: an override that would not survive a
			// restart is refused, not applied.
			prev, had := e.audit.overrides[id]
			e.audit.overrides[id] = on
			restore := func() {
				if had {
					e.audit.overrides[id] = prev
				} else {
					delete(e.audit.overrides, id)
				}
			}
			if err := e.audit.save(); err != nil {
				restore()
				return fmt.Errorf("endpoint %d: save its audit mode: %w", id, err)
			}
			reg.registration.Audit = on
			if _, err := e.repo.UpsertEndpoint(reg.registration); err != nil {
				restore()
				if serr := e.audit.save(); serr != nil {
					err = errors.Join(err, serr)
				}
				return fmt.Errorf("endpoint %d: %w", id, err)
			}
			return nil
		}
	}
	return fmt.Errorf("endpoint %d: %w", id, errNoEndpoint)
}

// ConfigureEndpoint changes a local endpoint's options at runtime (`ward
// endpoint config`) and publishes the result.
func (a *Agent) ConfigureEndpoint(ctx context.Context, id uint64, c api.EndpointConfig) error {
	if a.eng == nil {
		return fmt.Errorf("endpoint %d: %w (no policy directory)", id, errNoEndpoint)
	}
	if c.Audit == nil {
		return nil
	}
	if err := a.eng.setAudit(id, *c.Audit); err != nil {
		return err
	}
	a.log.Info("endpoint configured", "endpoint", id, "audit", *c.Audit)
	a.eng.publish(ctx)
	return nil
}

// handleEndpointConfig serves api.EndpointConfigPath on the status socket.
func (a *Agent) handleEndpointConfig(ctx context.Context, mux *http.ServeMux) {
	mux.HandleFunc("POST "+api.EndpointConfigPath, func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
		if err != nil {
			http.Error(w, fmt.Sprintf("endpoint id %q: want a number", r.PathValue("id")), http.StatusBadRequest)
			return
		}
		var c api.EndpointConfig
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			http.Error(w, fmt.Sprintf("endpoint config: %v", err), http.StatusBadRequest)
			return
		}
		if err := a.ConfigureEndpoint(ctx, id, c); err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, errNoEndpoint) {
				code = http.StatusNotFound
			}
			http.Error(w, err.Error(), code)
			return
		}
		for _, e := range a.Status().Endpoints {
			if e.ID == id {
				w.Header().Set("content-type", "application/json")
				if err := json.NewEncoder(w).Encode(e); err != nil {
					a.log.Debug("endpoint config write", "error", err)
				}
				return
			}
		}
		http.Error(w, fmt.Sprintf("endpoint %d: %v", id, errNoEndpoint), http.StatusNotFound)
	})
}

// flowEventsStatus is the datapath's flow event counts (nil without the
// datapath).
func (a *Agent) flowEventsStatus() *api.FlowEvents {
	if a.dp == nil {
		return nil
	}
	fe := &api.FlowEvents{Read: a.dp.events.Read.Load(), Malformed: a.dp.events.Malformed.Load()}
	if n, err := a.dp.dp.EventsLost(); err == nil {
		fe.Lost = n
	}
	return fe
}

// DNSAudit implements dns.Auditor: the endpoint's audit mode in the
// current policy.
func (g *dnsGlue) DNSAudit(endpoint uint64) bool {
	p, ok := g.e.state().Policy.Endpoint(endpoint)
	if endpoint == hostEndpointKey {
		return g.hostDNSAudit(ok && p.Audit)
	}
	return ok && p.Audit
}

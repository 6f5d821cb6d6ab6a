package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/wardproxy/ward/agent/api"
	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/xds/npds"
)

// watchedTypes are the resource types whose acks and rejections the
// status shows.
var watchedTypes = []string{resource.ListenerType, resource.ClusterType, npds.NetworkPolicyType, npds.NetworkPolicyHostsType}

// Status is what `ward status` shows.
func (a *Agent) Status() api.Status {
	st := api.Status{Node: a.node, Streams: a.srv.Streams(), Acked: map[string]string{}}
	for _, typ := range watchedTypes {
		if v := a.srv.Acked(typ); v != "" {
			st.Acked[typ] = v
		}
		if n, ok := a.srv.LastNACK(typ); ok {
			st.NACKs = append(st.NACKs, api.NACK{TypeURL: n.TypeURL, Version: n.Version, Message: n.Message})
		}
	}
	for _, typ := range []string{npds.NetworkPolicyType, npds.NetworkPolicyHostsType} {
		rs := a.srv.Resources(typ)
		if len(rs) == 0 {
			continue
		}
		d := api.Delivery{Total: len(rs)}
		for _, r := range rs {
			if r.Acked {
				d.Acked++
				continue
			}
			d.NotApplied = append(d.NotApplied, api.Resource{Name: r.Name, Version: r.Version, Error: r.Error})
		}
		if st.Delivery == nil {
			st.Delivery = map[string]api.Delivery{}
		}
		st.Delivery[typ] = d
	}
	st.FlowEvents = a.flowEventsStatus()
	if a.groups != nil {
		for _, g := range a.groups.Status() {
			st.ToGroups = append(st.ToGroups, api.Derivative(g))
		}
	}
	st.Kubernetes = a.kubeStatus()
	if a.proc != nil {
		st.Envoy = &api.Envoy{PID: a.proc.PID(), Starts: a.proc.Starts(), Adopted: a.proc.Adopted(), LastError: a.proc.LastError()}
	}
	if a.eng != nil {
		s := a.eng.last.Load()
		p := &api.Policy{Dir: a.cfg.PolicyDir}
		if s != nil {
			p.Revision = s.Policy.Revision
		}
		if a.src != nil {
			if err := a.src.Err(); err != nil {
				p.Error = err.Error()
			}
			for _, f := range a.src.Status() {
				if f.Err != nil {
					p.Errors = append(p.Errors, api.FileError{File: f.Path, Error: f.Err.Error()})
				}
			}
		}
		st.Policy = p
		a.eng.errMu.Lock()
		for _, name := range sortedKeys(a.eng.errs) {
			st.Errors = append(st.Errors, a.eng.errs[name].Error())
		}
		a.eng.errMu.Unlock()
		st.Errors = append(st.Errors, a.eng.sourceErrors()...)
		st.Errors = append(st.Errors, unenforced(a.eng.repo.Policies(), a.cfg.HostFirewall.Enabled)...)
		if a.eps != nil {
			st.EndpointFiles = a.eps.files.status()
		}
		if a.svcs != nil {
			st.EndpointFiles = append(st.EndpointFiles, a.svcs.files.status()...)
		}
		for _, d := range a.endpointDetails(false) {
			st.Endpoints = append(st.Endpoints, d.Endpoint)
		}
	}
	return st
}

// unenforced names the rules wardd accepts but does not enforce: host
// policies (nodeSelector) while the host firewall is disabled, so that a
// user never takes them for enforced.
func unenforced(ps []*policy.Policy, hostFirewall bool) []string {
	if hostFirewall {
		return nil
	}
	var out []string
	for _, p := range ps {
		rules := p.Specs
		if p.Spec != nil {
			rules = append([]*policy.Rule{p.Spec}, rules...)
		}
		for _, r := range rules {
			if r != nil && r.NodeSelector != nil {
				out = append(out, fmt.Sprintf("policy %s (%s): nodeSelector rules (host policies) are not enforced: hostFirewall.enabled is false", p.Metadata.Name, p.File))
				break
			}
		}
	}
	return out
}

// watchNACKs reports Envoy's rejections of updates (for example a module
// that fails to load) with Envoy's own error text.
func (a *Agent) watchNACKs(ctx context.Context) error {
	seen := map[string]string{}
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		for _, typ := range watchedTypes {
			if n, ok := a.srv.LastNACK(typ); ok && seen[typ] != n.Nonce {
				seen[typ] = n.Nonce
				attrs := []any{"type", typ, "error", n.Message}
				if a.proc != nil && a.proc.LastError() != "" {
					attrs = append(attrs, "envoy_log", a.proc.LastError())
				}
				a.log.Error("configuration rejected", attrs...)
			}
		}
	}
}

// serveStatus serves the status document on the status socket until ctx is
// done.
func (a *Agent) serveStatus(ctx context.Context) error {
	path := filepath.Join(a.cfg.StateDir, api.Socket)
	_ = os.Remove(path)
	lis, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("status socket: %w", err)
	}
	// Its mode must not be the umask's: the socket changes endpoints
	// (audit mode turns enforcement off), so only wardd's user and group
	// may connect, as to the xDS and flow sockets.
	if err := os.Chmod(path, 0o660); err != nil {
		lis.Close()
		return fmt.Errorf("status socket: chmod %s: %w", path, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.StatusPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("content-type", "application/json")
		if err := json.NewEncoder(w).Encode(a.Status()); err != nil {
			a.log.Debug("status write", "error", err)
		}
	})
	a.handleIntrospect(mux)
	a.handleEndpointConfig(ctx, mux)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	stop := context.AfterFunc(ctx, func() { _ = hs.Close() })
	defer stop()
	if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("status server: %w", err)
	}
	_ = os.Remove(path)
	return nil
}

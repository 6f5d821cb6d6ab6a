package agent

import (
	"context"
	"log/slog"

	"github.com/wardproxy/ward/xds"
)

// policyResources is the Consumer that sends each state's policy
// resources (one NetworkPolicy per local endpoint and the identity table)
// to the in-Envoy filters over xDS.
type policyResources struct {
	srv *xds.Server
	log *slog.Logger
}

var _ Consumer = (*policyResources)(nil)

func (p *policyResources) Apply(_ context.Context, st *State) error {
	ws := make([]xds.Workload, 0, len(st.Workloads))
	for _, w := range st.Workloads {
		ws = append(ws, xds.Workload{Name: w.Name, ID: w.ID, IPs: w.Addrs, Remote: w.Remote})
	}
	ps, hosts := xds.Resources(st.Policy, ws)
	hv := p.srv.SetHosts(hosts)
	pv := p.srv.SetPolicies(ps)
	p.log.Debug("policy resources", "endpoints", len(ps), "policy_version", pv, "hosts_version", hv)
	return nil
}

package agent

import (
	"context"
	"fmt"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/wardproxy/ward/xds"
)

// baseResources are the node's Envoy resources other than the TLS ones:
// the configured static listeners and, with the datapath, the transparent
// listeners — among them one egress set per local endpoint, so they follow
// the endpoints.
func (a *Agent) baseResources() (xds.EnvoyResources, error) {
	res, err := a.staticResources()
	if err != nil {
		return res, err
	}
	if a.dp == nil || a.eng == nil {
		return res, nil
	}
	// Egress listeners carry the endpoints' identities, which the
	// repository assigns from their labels (a new endpoint has one before
	// its first publish).
	dr, err := a.datapathResources(a.eng.currentIdentity)
	if err != nil {
		return res, err
	}
	res.Listeners = append(res.Listeners, dr.Listeners...)
	res.Clusters = append(res.Clusters, dr.Clusters...)
	return res, nil
}

// endpointsChanged runs after the endpoint source changed the workloads:
// Envoy gets the listeners of the new set first, then the node publishes
// (BPF redirects only to listeners Envoy has been given).
func (a *Agent) endpointsChanged(ctx context.Context) {
	if a.tls != nil {
		res, err := a.baseResources()
		if err != nil {
			a.log.Error("envoy resources", "error", err)
		} else if err := a.tls.setBase(ctx, res); err != nil {
			a.log.Error("envoy resources", "error", err)
		}
	}
	a.eng.publish(ctx)
}

// setBase replaces the static and datapath resources and publishes them
// with the TLS resources last sent (the first Apply publishes otherwise).
func (t *tlsPolicy) setBase(ctx context.Context, base xds.EnvoyResources) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.base = base
	if t.last == nil {
		return nil
	}
	res := xds.EnvoyResources{
		Listeners: append(append([]types.Resource(nil), base.Listeners...), t.sent.Listeners...),
		Clusters:  append(append([]types.Resource(nil), base.Clusters...), t.sent.Clusters...),
		Secrets:   append(append([]types.Resource(nil), base.Secrets...), t.sent.Secrets...),
	}
	if _, err := t.a.srv.SetEnvoyResources(ctx, t.a.node, res); err != nil {
		return fmt.Errorf("envoy resources: %w", err)
	}
	return nil
}

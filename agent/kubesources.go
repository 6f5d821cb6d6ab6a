package agent

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/wardproxy/ward/agent/api"
	"github.com/wardproxy/ward/agent/kube"
	"github.com/wardproxy/ward/policy"
)

// kubeSink is the engine's Kubernetes source (sourceKube): the cluster
// sources of package kube hand it their lists, it applies them beside the
// node config's and publishes what changed — once the engine has
// published its first state: until then a change only waits for that
// first publish (which waits for the sources' first lists), so the node
// never enforces a partial view.
type kubeSink struct {
	a   *Agent
	ctx context.Context
	// pending: a change not published yet; whoever swaps it publishes
	// (the sink after the first publish, or runKubePending right after it).
	pending atomic.Bool
	// local is the local endpoints' signature last set (localSignature).
	local string
	// hostLabels are the host endpoint's labels last set from this
	// node's Node object.
	hostLabels string
}

var _ kube.Sink = (*kubeSink)(nil)

func (s *kubeSink) SetEndpoints(eps []kube.Endpoint) {
	list := make([]Endpoint, 0, len(eps))
	for _, ke := range eps {
		ep := Endpoint{Name: ke.Name, ID: ke.ID, IPs: ke.IPs, Labels: ke.Labels, Namespace: ke.Namespace, Remote: ke.Remote, Interface: ke.Interface}
		for _, p := range ke.Ports {
			ep.Ports = append(ep.Ports, ContainerPort{Name: p.Name, Port: p.Port, Protocol: p.Protocol})
		}
		list = append(list, ep)
	}
	changed, err := s.a.eng.setEndpoints(sourceKube, list, "")
	if err != nil {
		s.a.log.Warn("kubernetes endpoints", "error", err)
	}
	if changed {
		// The Envoy resources built from the local endpoints (their
		// egress listeners) are rebuilt only when those changed: most
		// pod events are other nodes' pods.
		local := localSignature(list)
		s.changed(local != s.local)
		s.local = local
	}
}

// localSignature sums up what the Envoy resources take from the local
// endpoints.
func localSignature(eps []Endpoint) string {
	var b strings.Builder
	for _, ep := range eps {
		if !ep.Remote {
			fmt.Fprintf(&b, "%d %s %s %v\n", ep.ID, ep.Name, ep.Interface, ep.IPs)
		}
	}
	return b.String()
}

func (s *kubeSink) SetServices(svcs []kube.Service) {
	list := make([]Service, 0, len(svcs))
	for _, ks := range svcs {
		list = append(list, Service{Name: ks.Name, Namespace: ks.Namespace, Labels: ks.Labels, Selector: ks.Selector, Addresses: ks.Addresses})
	}
	if s.a.eng.setServices(sourceKube, list) {
		s.changed(false)
	}
}

func (s *kubeSink) SetNodes(nodes []kube.Node, self *kube.Node, apiserver []netip.Prefix) {
	list := make([]Node, 0, len(nodes))
	for _, kn := range nodes {
		list = append(list, Node{Name: kn.Name, Addresses: kn.Addresses, Labels: kn.Labels})
	}
	changed, err := s.a.eng.setNodes(sourceKube, list)
	if err != nil {
		s.a.log.Warn("kubernetes nodes", "error", err)
	}
	if s.a.eng.setAPIServer(sourceKube, apiserver) || changed {
		changed = true
	}
	if self != nil && s.setHostLabels(self.Labels) {
		changed = true
	}
	if changed {
		s.changed(false)
	}
}

// setHostLabels makes this node's Node labels the host endpoint's (what
// nodeSelector selects; they replace those of the node config's nodes
// entry) with the host firewall on, and reports whether they changed.
func (s *kubeSink) setHostLabels(m map[string]string) bool {
	if !s.a.cfg.HostFirewall.Enabled || s.a.dp == nil {
		return false
	}
	ls := hostLabels([]Node{{Name: s.a.node, Labels: m}}, s.a.node)
	key := ls.String()
	if key == s.hostLabels {
		return false
	}
	if _, err := s.a.eng.repo.UpsertEndpoint(policy.Endpoint{ID: hostEndpointKey, Labels: ls, Audit: s.a.cfg.HostFirewall.Audit}); err != nil {
		s.a.log.Warn("kubernetes node labels", "error", err)
		return false
	}
	s.hostLabels = key
	return true
}

// changed publishes (after the first publish); endpoints also rebuild the
// Envoy resources that depend on the local endpoints.
func (s *kubeSink) changed(endpoints bool) {
	s.pending.Store(true)
	select {
	case <-s.a.eng.published:
	default:
		return
	}
	if !s.pending.Swap(false) {
		return
	}
	if endpoints {
		s.a.endpointsChanged(s.ctx)
		return
	}
	s.a.eng.publish(s.ctx)
}

// runKubePending publishes, right after the first publish, a change the
// sources made while it was under way.
func (s *kubeSink) runKubePending(ctx context.Context) error {
	select {
	case <-s.a.eng.published:
	case <-ctx.Done():
		return nil
	}
	if s.pending.Swap(false) {
		s.a.endpointsChanged(ctx)
	}
	return nil
}

// newKubeSources registers the cluster sources on the agent's Kubernetes
// client (before it runs).
func (a *Agent) newKubeSources(ctx context.Context) (*kube.Sources, *kubeSink, error) {
	sink := &kubeSink{a: a, ctx: ctx}
	src, err := kube.NewSources(a.kube.Informers, a.kube.Track, kube.SourcesConfig{
		NodeName: a.kube.Config().NodeName, ClusterName: a.cfg.clusterName(), StateDir: a.cfg.StateDir, Sink: sink, Logger: a.log,
	})
	return src, sink, err
}

// kubeParts are the agent's Kubernetes sources beside the policy source
// (package kube's Client runs the informers).
type kubeParts struct {
	src     *kube.Sources
	sink    *kubeSink
	secrets *kube.SecretsMirror // nil with a secretsDir of the node config
}

// openKube registers the cluster sources on the Kubernetes client and, when
// the node config names no secretsDir, mirrors the secrets namespace into
// StateDir/kube-secrets for the TLS policy (before newTLSPolicy).
func (a *Agent) openKube(ctx context.Context) error {
	if a.kube == nil || a.eng == nil {
		return nil
	}
	src, sink, err := a.newKubeSources(ctx)
	if err != nil {
		return err
	}
	a.kp = &kubeParts{src: src, sink: sink}
	if a.cfg.SecretsDir == "" {
		dir := filepath.Join(a.cfg.StateDir, "kube-secrets")
		if a.kp.secrets, err = kube.NewSecretsMirror(a.kube.Kube, a.kube.Config().SecretsNamespace, dir, a.log); err != nil {
			return err
		}
	}
	return nil
}

// kubeSecretsDir is the directory and namespace of the mirrored secrets
// ("" without).
func (a *Agent) kubeSecretsDir() (dir, namespace string) {
	if a.kp == nil || a.kp.secrets == nil {
		return "", ""
	}
	return filepath.Join(a.cfg.StateDir, "kube-secrets"), a.kube.Config().SecretsNamespace
}

// runKube runs the cluster sources in g.
func (a *Agent) runKube(ctx context.Context, g *errgroup.Group) {
	if a.kp == nil {
		return
	}
	a.kp.sink.ctx = ctx // set before any publish: the sink publishes only after the first
	g.Go(func() error { return a.kp.src.Run(ctx) })
	g.Go(func() error { return a.kp.sink.runKubePending(ctx) })
	if a.kp.secrets != nil {
		g.Go(func() error { return a.kp.secrets.Run(ctx) })
	}
}

// waitKube waits until the cluster sources handed their first lists to
// the engine (and the secrets are mirrored); false when ctx is done.
func (a *Agent) waitKube(ctx context.Context) bool {
	if a.kp == nil {
		return true
	}
	chans := []<-chan struct{}{a.kp.src.Synced()}
	if a.kp.secrets != nil {
		chans = append(chans, a.kp.secrets.Synced())
	}
	for _, c := range chans {
		select {
		case <-c:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// kubeSourcesStatus adds the cluster sources' state to the status.
func (a *Agent) kubeSourcesStatus(k *api.Kubernetes) {
	if a.kp == nil {
		return
	}
	st := a.kp.src.Status()
	k.Pods, k.LocalPods = st.Pods, st.LocalPods
	k.Notes = append(k.Notes, st.Notes...)
	if n := len(st.WaitingForInterface); n > 0 {
		k.Notes = append(k.Notes, fmt.Sprintf("%d local pods wait for their interface (no host route to their IP yet): %s", n, strings.Join(st.WaitingForInterface, ", ")))
	}
}

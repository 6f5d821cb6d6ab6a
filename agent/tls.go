package agent

// TLS policy in datapath mode: the ports of a resolved policy that carry
// serverNames or terminatingTLS / originatingTLS are redirected by BPF to a
// TLS listener (one shared by every local endpoint's ingress, one per local
// endpoint's egress so that its upstream sockets carry the endpoint's
// identity), whose chains the tlsPolicy consumer builds from each published
// state:
//
//   - a selection with serverNames and no terminatingTLS passes the
//     connection through untouched (tcp_proxy) when the ClientHello's SNI
//     matches, and refuses every other SNI;
//   - a selection with terminatingTLS intercepts: Envoy completes the
//     handshake with the secret's certificate, ward.http enforces the HTTP
//     rules on the decrypted requests, and the upstream connection is TLS
//     verified against originatingTLS's CA bundle (plain HTTP without
//     originatingTLS);
//   - a selection with originatingTLS alone takes the client's plain HTTP
//     (ward.http) and sends it upstream over TLS, with the Host header as
//     SNI and as the name the upstream certificate must carry.
//
// Secrets come from the secrets directory (package secrets) by reference
// and reach Envoy over SDS; the listeners name them. A chain whose secret is
// missing or invalid is left out (its connections are refused) and the
// error is the consumer's (logged with each publish); the other chains keep
// working. A rotation in the directory republishes the secrets only: new
// handshakes get the new certificate, established connections stay.
//
// Limits: a chain is selected by address, port and SNI, not by the
// remote's identity — the datapath has already allowed the remote on the
// port, so when several selections of one port name different remotes,
// each remote's connections may use any of their server names; an
// interception chain's ward.http applies the HTTP rules of every
// selection of the port that selects the remote, whatever the SNI.
// originatingTLS without terminatingTLS takes plain HTTP from the client
// (no SNI: serverNames cannot apply, such a rule is left out).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"

	"github.com/wardproxy/ward/bpf/redirect"
	"github.com/wardproxy/ward/policy"
	l7kind "github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/proxylib/policyfilter"
	"github.com/wardproxy/ward/secrets"
	"github.com/wardproxy/ward/xds"
)

// isTLSPort reports whether a proxied port is enforced by the TLS
// listeners: serverNames only, TLS interception (with or without HTTP
// rules), or plain HTTP sent upstream over TLS (originatingTLS alone).
func isTLSPort(lp *policy.L7Port) bool {
	if lp.Kind == l7kind.KindTLS {
		return true
	}
	if lp.Kind != l7kind.KindHTTP {
		return false
	}
	for _, s := range lp.Selections {
		if s.TerminatingTLS != nil || s.OriginatingTLS != nil {
			return true
		}
	}
	return false
}

// tlsPort is the TLS listener of endpoint ep in direction dir (0 when the
// endpoint has none: the flow is dropped).
func (d *datapath) tlsPort(ep uint64, dir policy.Direction) uint16 {
	if dir == policy.Ingress {
		return d.cfg.TLSIngressPort
	}
	p, ok := d.egressPort(ep)
	if !ok {
		return 0
	}
	return d.cfg.EgressTLSBasePort + (p - d.cfg.EgressHTTPBasePort)
}

// tlsPolicy is the Consumer that builds the TLS listeners, their clusters
// and their secrets from each state, and publishes them with the node's
// other Envoy resources (base). It runs after the datapath consumer, which
// gives each local endpoint its egress listener slot.
type tlsPolicy struct {
	a       *Agent
	secrets *secrets.Source // nil without a secrets directory
	log     *slog.Logger
	changed chan struct{} // the secrets directory changed
	// onChange runs after the TLS resources followed a change of the
	// secrets directory (headerMatches secrets); nil: nothing.
	onChange func()

	mu   sync.Mutex
	base xds.EnvoyResources // the static and datapath resources; set before the first Apply
	last *State
	sent xds.EnvoyResources // the TLS part last published
	// warned is the last overlap warning logged (logged once per change).
	warned string
}

var _ Consumer = (*tlsPolicy)(nil)

// newTLSPolicy opens the secrets directory, when configured.
func (a *Agent) newTLSPolicy() (*tlsPolicy, error) {
	t := &tlsPolicy{a: a, log: a.log, changed: make(chan struct{}, 1)}
	// With Kubernetes and no secretsDir, the secrets namespace mirrored
	// (kube.SecretsMirror), references outside it refused.
	dir, ns := a.cfg.SecretsDir, ""
	if dir == "" {
		dir, ns = a.kubeSecretsDir()
	}
	if dir == "" {
		return t, nil
	}
	src, err := secrets.New(secrets.Config{Dir: dir, Namespace: ns, Logger: a.log, OnChange: func() {
		select {
		case t.changed <- struct{}{}:
		default: // one pending is enough: reapply reads the directory's latest
		}
	}})
	if err != nil {
		return nil, fmt.Errorf("secretsDir: %w", err)
	}
	t.secrets = src
	return t, nil
}

// run watches the secrets directory until ctx is done; a change
// republishes the last state's TLS resources with the new secrets.
func (t *tlsPolicy) run(ctx context.Context) error {
	if t.secrets == nil {
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- t.secrets.Run(ctx) }()
	for {
		select {
		case err := <-done:
			return err
		case <-t.changed:
			err := t.reapply(ctx)
			if err != nil {
				t.log.Error("tls secrets", "error", err)
			}
			// The status shows this consumer's errors as of now: a
			// secret that appeared clears its error without a publish.
			if t.a.eng != nil {
				t.a.eng.setConsumerErr(t, err)
			}
			if t.onChange != nil {
				t.onChange()
			}
		}
	}
}

// Apply implements Consumer.
func (t *tlsPolicy) Apply(ctx context.Context, st *State) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.last = st
	return t.publishLocked(ctx)
}

// reapply publishes again for the last state (the secrets changed).
func (t *tlsPolicy) reapply(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.last == nil {
		return nil
	}
	return t.publishLocked(ctx)
}

func (t *tlsPolicy) publishLocked(ctx context.Context) error {
	tlsRes, buildErr := t.build(t.last)
	if equalResources(tlsRes, t.sent) {
		return buildErr
	}
	res := xds.EnvoyResources{
		Listeners: append(append([]types.Resource(nil), t.base.Listeners...), tlsRes.Listeners...),
		Clusters:  append(append([]types.Resource(nil), t.base.Clusters...), tlsRes.Clusters...),
		Secrets:   append(append([]types.Resource(nil), t.base.Secrets...), tlsRes.Secrets...),
	}
	if _, err := t.a.srv.SetEnvoyResources(ctx, t.a.node, res); err != nil {
		return errors.Join(buildErr, fmt.Errorf("tls listeners: %w", err))
	}
	t.sent = tlsRes
	return buildErr
}

func equalResources(a, b xds.EnvoyResources) bool {
	eq := func(x, y []types.Resource) bool {
		if len(x) != len(y) {
			return false
		}
		for i := range x {
			if !proto.Equal(x[i], y[i]) {
				return false
			}
		}
		return true
	}
	return eq(a.Listeners, b.Listeners) && eq(a.Clusters, b.Clusters) && eq(a.Secrets, b.Secrets)
}

// tlsChain is a chain before its secrets are checked.
type tlsChain struct {
	chain xds.PolicyTLSChain
	// where names the rule in errors: listener, port, server names.
	where string
	// certificate and ca are the SDS names the chain needs ("" if none).
	certificate, ca string
	// http: the chain carries HTTP (ward.http applies).
	http bool
}

// tlsScope collects the chains and clusters of one TLS listener.
type tlsScope struct {
	listener string
	port     uint16
	mark     uint32
	// httpMark marks the upstreams of the chains that run ward.http: on
	// an egress listener it also says redirect.MarkIngressChecked
	// (ward.http applies a local destination's ingress HTTP rules); the
	// serverNames pass-through keeps mark (such an upstream to a local
	// destination with ingress L7 rules is dropped, fail closed).
	httpMark uint32
	filter   policyfilter.Config
	prefix   string // of cluster names
	chains   []tlsChain
	clusters map[string]types.Resource
	orig     map[string]string // originating cluster name by CA and client certificate
	warnings []string          // rules the chains enforce more loosely than written
}

// build returns the TLS listeners, clusters and secrets of st, and one
// error per rule that could not be built or whose secret is unavailable.
func (t *tlsPolicy) build(st *State) (xds.EnvoyResources, error) {
	var res xds.EnvoyResources
	var errs []error
	d := t.a.dp
	ingress := &tlsScope{listener: "ward-tls-ingress", port: d.cfg.TLSIngressPort, mark: redirect.MarkProxyIngress, httpMark: redirect.MarkProxyIngress,
		filter: policyfilter.Config{Direction: "ingress", AccessLog: d.cfg.AccessLog}, prefix: "ward-tls-ingress", clusters: map[string]types.Resource{}, orig: map[string]string{}}
	scopes := []*tlsScope{ingress}
	var reqs []secrets.Request
	for _, w := range st.Workloads {
		if w.Remote {
			continue
		}
		pol, ok := st.Policy.Endpoint(w.ID)
		if !ok {
			continue
		}
		var ips []string
		for _, a := range w.Addrs {
			ips = append(ips, a.String())
		}
		reqs = append(reqs, ingress.add(pol.Ingress, ips, &errs)...)
		port := d.tlsPort(w.ID, policy.Egress)
		if port == 0 {
			continue
		}
		mark := redirect.ProxyEgressMark(uint32(pol.Identity))
		eg := &tlsScope{listener: fmt.Sprintf("ward-tls-egress-%d", w.ID), port: port, mark: mark, httpMark: mark | redirect.MarkIngressChecked,
			filter: policyfilter.Config{Direction: "egress", Endpoint: w.Name, AccessLog: d.cfg.AccessLog}, prefix: fmt.Sprintf("ward-tls-egress-%d", w.ID), clusters: map[string]types.Resource{}, orig: map[string]string{}}
		reqs = append(reqs, eg.add(pol.Egress, nil, &errs)...)
		scopes = append(scopes, eg)
	}
	published := map[string]bool{}
	if len(reqs) > 0 {
		if t.secrets == nil {
			errs = append(errs, errors.New("tls: terminatingTLS/originatingTLS need a secrets directory (secretsDir in the node config)"))
		} else {
			sec, err := t.secrets.Resolve(reqs)
			if err != nil {
				errs = append(errs, fmt.Errorf("tls: %w", err))
			}
			for _, s := range sec {
				published[s.GetName()] = true
				res.Secrets = append(res.Secrets, s)
			}
		}
	}
	var warnings []string
	for _, sc := range scopes {
		warnings = append(warnings, sc.warnings...)
		var chains []xds.PolicyTLSChain
		for _, c := range sc.chains {
			switch {
			case c.certificate != "" && !published[c.certificate]:
				errs = append(errs, fmt.Errorf("tls: %s: terminating secret %s unavailable; rule left out", c.where, c.certificate))
			case c.ca != "" && !published[c.ca]:
				errs = append(errs, fmt.Errorf("tls: %s: originating secret %s unavailable; rule left out", c.where, c.ca))
			default:
				if c.http {
					c.chain.Filters = []xds.ModuleFilter{{Name: policyfilter.HTTPName, Config: t.a.filterConfig(sc.filter)}}
				}
				chains = append(chains, c.chain)
			}
		}
		if len(chains) == 0 {
			continue // nothing to listen for: redirected connections fail
		}
		l, err := xds.PolicyTLSListener{Name: sc.listener, Address: "0.0.0.0", Port: uint32(sc.port), Transparent: true, Chains: chains}.Build()
		if err != nil {
			errs = append(errs, fmt.Errorf("tls: %w", err))
			continue
		}
		if sc.filter.Direction == "egress" {
			xds.OriginalSource(l) // as the egress HTTP listeners (datapathResources)
		}
		res.Listeners = append(res.Listeners, l)
		names := make([]string, 0, len(sc.clusters))
		for n := range sc.clusters {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			res.Clusters = append(res.Clusters, sc.clusters[n])
		}
	}
	if w := strings.Join(warnings, "; "); w != t.warned {
		t.warned = w
		if w != "" {
			t.log.Warn("tls policy enforced more loosely than written", "rules", w)
		}
	}
	return res, errors.Join(errs...)
}

// add turns the TLS ports of one direction's policy into chains (ips: the
// destination addresses the chains are restricted to, for the shared
// ingress listener) and returns the secrets they need.
func (sc *tlsScope) add(dp *policy.DirectionPolicy, ips []string, errs *[]error) []secrets.Request {
	if dp == nil {
		return nil
	}
	var reqs []secrets.Request
	for _, lp := range dp.Proxy {
		if !isTLSPort(lp) {
			continue
		}
		ports := []xds.PortRange{{Port: lp.Port, End: lp.EndPort}}
		for _, s := range lp.Selections {
			if !s.Wildcard && len(s.Remotes) == 0 {
				continue // selects nobody (yet)
			}
			where := fmt.Sprintf("%s port %d server names %v", sc.listener, lp.Port, s.ServerNames)
			c := tlsChain{where: where, chain: xds.PolicyTLSChain{ServerNames: s.ServerNames, Ports: ports, DestinationIPs: ips}}
			term, hasTerm := secrets.RefFor(s.TerminatingTLS)
			orig, hasOrig := secrets.RefFor(s.OriginatingTLS)
			switch {
			case hasTerm:
				c.http = true
				c.certificate = term.CertificateName()
				c.chain.Certificate = c.certificate
				reqs = append(reqs, secrets.Request{Ref: term, Use: secrets.UseCertificate})
				if hasOrig {
					c.ca = orig.TrustedCAName()
					use := secrets.UseTrustedCA
					oc := xds.OriginatingCluster{TrustedCA: c.ca, ALPN: true}
					if s.OriginatingTLS.Certificate != "" {
						// A client certificate only when the rule names its
						// key: the CA bundle secret usually has none.
						use |= secrets.UseCertificate
						oc.Certificate = orig.CertificateName()
					}
					reqs = append(reqs, secrets.Request{Ref: orig, Use: use})
					key := oc.TrustedCA + "|" + oc.Certificate
					if sc.orig[key] == "" {
						sc.orig[key] = fmt.Sprintf("%s-orig-%d", sc.prefix, len(sc.orig))
					}
					oc.Name = sc.orig[key]
					c.chain.Cluster = oc.Name
					if _, ok := sc.clusters[oc.Name]; !ok {
						cl, err := oc.Build()
						if err != nil {
							*errs = append(*errs, fmt.Errorf("tls: %s: %w", where, err))
							continue
						}
						sc.clusters[oc.Name] = xds.MarkUpstream(cl, sc.httpMark)
					}
				} else {
					// terminatingTLS alone: the upstream speaks plain HTTP.
					c.chain.Cluster = sc.prefix + "-plain"
					sc.clusters[c.chain.Cluster] = xds.MarkUpstream(xds.OriginalDstCluster(c.chain.Cluster, false), sc.httpMark)
				}
			case hasOrig:
				// The endpoint speaks plain HTTP; Envoy sends it upstream
				// over TLS, SNI and certificate name from the Host header.
				if len(s.ServerNames) > 0 {
					*errs = append(*errs, fmt.Errorf("tls: %s: serverNames with originatingTLS need terminatingTLS (a plaintext request has no SNI); rule left out", where))
					continue
				}
				c.http, c.ca = true, orig.TrustedCAName()
				c.chain.Plaintext = true
				reqs = append(reqs, secrets.Request{Ref: orig, Use: secrets.UseTrustedCA})
				key := "auto|" + c.ca
				if sc.orig[key] == "" {
					sc.orig[key] = fmt.Sprintf("%s-orig-%d", sc.prefix, len(sc.orig))
				}
				c.chain.Cluster = sc.orig[key]
				if _, ok := sc.clusters[c.chain.Cluster]; !ok {
					cl, err := xds.OriginatingCluster{Name: c.chain.Cluster, TrustedCA: c.ca, AutoSNI: true, ALPN: true}.Build()
					if err != nil {
						*errs = append(*errs, fmt.Errorf("tls: %s: %w", where, err))
						continue
					}
					sc.clusters[c.chain.Cluster] = xds.MarkUpstream(cl, sc.httpMark)
				}
			case len(s.ServerNames) > 0:
				c.chain.Cluster = sc.prefix + "-pass"
				sc.clusters[c.chain.Cluster] = xds.MarkUpstream(xds.OriginalDstCluster(c.chain.Cluster, false), sc.mark)
			default:
				continue // no TLS part (an L4 allow merged into the port)
			}
			sc.chains = append(sc.chains, c)
		}
		if w := overlapWarning(lp); w != "" {
			sc.warnings = append(sc.warnings, fmt.Sprintf("%s port %d: %s", sc.listener, lp.Port, w))
		}
	}
	return reqs
}

// overlapWarning names what the chains of one port cannot tell apart (see
// the package comment's limits), or "".
func overlapWarning(lp *policy.L7Port) string {
	var intercept, pass []*policy.L7Selection
	for _, s := range lp.Selections {
		switch {
		case s.TerminatingTLS != nil:
			intercept = append(intercept, s)
		case s.OriginatingTLS == nil && len(s.ServerNames) > 0:
			pass = append(pass, s)
		}
	}
	names := func(s *policy.L7Selection) string { return strings.Join(s.ServerNames, ",") }
	remotes := func(s *policy.L7Selection) string { return fmt.Sprint(s.Wildcard, s.Remotes) }
	for i, a := range intercept {
		for _, b := range intercept[i+1:] {
			if names(a) != names(b) && (!a.AllowAll || !b.AllowAll) {
				return fmt.Sprintf("the HTTP rules for server names [%s] and [%s] apply to both (ward.http does not select rules by SNI)", names(a), names(b))
			}
		}
	}
	for i, a := range pass {
		for _, b := range pass[i+1:] {
			if names(a) != names(b) && remotes(a) != remotes(b) {
				return fmt.Sprintf("server names [%s] and [%s] are allowed to the remotes of both (chains select by SNI, not by remote)", names(a), names(b))
			}
		}
	}
	return ""
}

// Package flowcheck evaluates flows offline against a set of policies, the
// L7 rules included: the engine behind `ward policy test`. It joins the
// policy engine (package policy) with the L7 matchers of filters/http,
// filters/kafka and filters/dns, which package policy must not import.
package flowcheck

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/wardproxy/ward/flow"
	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/policy/matchpattern"
)

// Flow is one flow of a flows file.
type Flow struct {
	Name     string `json:"name"`
	From     Peer   `json:"from"`
	To       Peer   `json:"to"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol,omitempty"` // default TCP; for ICMP, Port is the type
	HTTP     *HTTP  `json:"http,omitempty"`
	Kafka    *Kafka `json:"kafka,omitempty"`
	DNS      *DNS   `json:"dns,omitempty"`
	SNI      string `json:"sni,omitempty"`
}

// Peer is one side of a flow: an endpoint (Labels and Namespace), a CIDR
// or address outside the cluster, an entity, or (as destination only) an
// FQDN whose IP the DNS proxy learnt.
type Peer struct {
	Labels    map[string]string `json:"labels,omitempty"`
	Namespace string            `json:"namespace,omitempty"`
	CIDR      string            `json:"cidr,omitempty"`
	Entity    string            `json:"entity,omitempty"`
	FQDN      string            `json:"fqdn,omitempty"`
}

func (p Peer) isEndpoint() bool { return p.CIDR == "" && p.Entity == "" && p.FQDN == "" }

// HTTP is an HTTP request.
type HTTP struct {
	Method  string            `json:"method,omitempty"`
	Path    string            `json:"path,omitempty"`
	Host    string            `json:"host,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
}

// Kafka is a Kafka request. APIKey is a name ("produce", "fetch") or a
// number.
type Kafka struct {
	APIKey     json.RawMessage `json:"apiKey"`
	APIVersion int16           `json:"apiVersion,omitempty"`
	ClientID   string          `json:"clientID,omitempty"`
	Topics     []string        `json:"topics,omitempty"`
}

// DNS is a DNS query.
type DNS struct {
	Query string `json:"query"`
}

// Result is the verdict on one flow.
type Result struct {
	Name    string       `json:"name"`
	Verdict flow.Verdict `json:"verdict"` // VerdictAllowed, VerdictDenied or VerdictError
	Reason  string       `json:"reason"`
}

// Result verdicts (flow.Verdict, the one definition). VerdictError means
// the flow could not be decided (an L7 protocol whose matcher is not
// available).
const (
	VerdictAllowed = flow.Allowed
	VerdictDenied  = flow.Denied
	VerdictError   = flow.Error
)

// ParseFlows decodes a flows file: a JSON array of Flow. Unknown fields
// are an error.
func ParseFlows(data []byte) ([]Flow, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var flows []Flow
	if err := dec.Decode(&flows); err != nil {
		return nil, fmt.Errorf("flows: %w", err)
	}
	var errs []error
	for i, f := range flows {
		if err := f.validate(); err != nil {
			errs = append(errs, fmt.Errorf("flows[%d] (%s): %w", i, f.Name, err))
		}
	}
	return flows, errors.Join(errs...)
}

func (f Flow) validate() error {
	var errs []error
	if f.Name == "" {
		errs = append(errs, errors.New("name: missing"))
	}
	for _, side := range []struct {
		n string
		p Peer
	}{{"from", f.From}, {"to", f.To}} {
		n := 0
		if len(side.p.Labels) > 0 || side.p.Namespace != "" {
			n++
		}
		for _, s := range []string{side.p.CIDR, side.p.Entity, side.p.FQDN} {
			if s != "" {
				n++
			}
		}
		if n != 1 {
			errs = append(errs, fmt.Errorf("%s: needs exactly one of labels/namespace, cidr, entity, fqdn", side.n))
		}
	}
	if f.From.FQDN != "" {
		errs = append(errs, errors.New("from: fqdn is only allowed in to"))
	}
	if f.Port < 0 || f.Port > 65535 {
		errs = append(errs, fmt.Errorf("port: %d out of range 0-65535", f.Port))
	}
	if _, err := policy.ParseProtocol(cmpOr(f.Protocol, "TCP")); err != nil {
		errs = append(errs, fmt.Errorf("protocol: %w", err))
	}
	n := 0
	for _, b := range []bool{f.HTTP != nil, f.Kafka != nil, f.DNS != nil} {
		if b {
			n++
		}
	}
	if n > 1 {
		errs = append(errs, errors.New("at most one of http, kafka, dns"))
	}
	if f.Kafka != nil {
		if _, err := kafkaAPIKey(f.Kafka.APIKey); err != nil {
			errs = append(errs, fmt.Errorf("kafka.apiKey: %w", err))
		}
	}
	return errors.Join(errs...)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Options configure Evaluate.
type Options struct {
	Mode  policy.EnforcementMode
	Audit bool
	// Secrets resolves headerMatches secrets; nil: none.
	Secrets SecretSource
}

// SecretSource looks up secret values.
type SecretSource interface {
	Secret(namespace, name string) (string, bool)
}

// Evaluate decides every flow against the policies. A flow is allowed when
// the sender's egress policy and the receiver's ingress policy both allow
// it, L7 included. Peers that are not endpoints have no policy of their own.
func Evaluate(policies []*policy.Policy, flows []Flow, opts Options) ([]Result, error) {
	snap, peers, err := Resolve(policies, flows, opts)
	if err != nil {
		return nil, err
	}
	e := &evaluator{snap: snap, opts: opts, cache: map[*policy.L7Selection]any{}}
	out := make([]Result, 0, len(flows))
	for i, f := range flows {
		p := peers[i]
		out = append(out, e.flow(f, p.Src, p.Dst, p.SrcEP, p.DstEP))
	}
	return out, nil
}

// Peers are the two sides of one flow as Evaluate resolves them: their
// identities, and the resolved policy of each side that is a ward
// endpoint (nil otherwise).
type Peers struct {
	Src, Dst     policy.NumericIdentity
	SrcEP, DstEP *policy.EndpointPolicy
}

// Resolve is the resolution Evaluate decides on: the policies in a
// repository, one endpoint per distinct labels and namespace, FQDN
// identities as the DNS proxy would allocate them, and the sides of every
// flow. Other paths to a verdict (the in-Envoy filters, in the round-trip
// test) start from it.
func Resolve(policies []*policy.Policy, flows []Flow, opts Options) (*policy.Snapshot, []Peers, error) {
	repo := policy.NewRepository(policy.Config{Mode: opts.Mode, Audit: opts.Audit})
	for _, p := range policies {
		repo.Upsert(p)
	}
	// Every distinct labels+namespace is one endpoint.
	epIDs := map[string]uint64{}
	epOf := func(p Peer) (uint64, error) {
		ls := policy.K8sLabels(p.Labels, cmpOr(p.Namespace, "default"))
		k := ls.String()
		if id, ok := epIDs[k]; ok {
			return id, nil
		}
		id := uint64(len(epIDs) + 1)
		epIDs[k] = id
		_, err := repo.UpsertEndpoint(policy.Endpoint{ID: id, Labels: ls})
		return id, err
	}
	for _, f := range flows {
		for _, p := range []Peer{f.From, f.To} {
			if p.isEndpoint() {
				if _, err := epOf(p); err != nil {
					return nil, nil, err
				}
			}
		}
	}
	// FQDN identities, as the DNS proxy would allocate them.
	snap := repo.Snapshot()
	fqdnID := map[string]policy.NumericIdentity{}
	for _, f := range flows {
		if f.To.FQDN == "" {
			continue
		}
		if _, ok := fqdnID[f.To.FQDN]; ok {
			continue
		}
		ls, ok := policy.FQDNLabels(f.To.FQDN, snap.FQDNSelectors())
		if !ok {
			fqdnID[f.To.FQDN] = policy.IdentityWorld
			continue
		}
		ident, _, err := repo.Allocator().Allocate(ls)
		if err != nil {
			return nil, nil, err
		}
		repo.UpsertIdentity(ident)
		fqdnID[f.To.FQDN] = ident.ID
	}
	snap = repo.Snapshot()
	out := make([]Peers, 0, len(flows))
	for _, f := range flows {
		peerID := func(p Peer) (policy.NumericIdentity, *policy.EndpointPolicy, error) {
			switch {
			case p.FQDN != "":
				return fqdnID[p.FQDN], nil, nil
			case p.Entity != "":
				id, ok := policy.ReservedIdentity(p.Entity)
				if !ok {
					return 0, nil, fmt.Errorf("entity %q is not a single identity (use one of host, world, remote-node, kube-apiserver, ingress, health, init, unmanaged, world-ipv4, world-ipv6)", p.Entity)
				}
				return id, nil, nil
			case p.CIDR != "":
				a, err := netip.ParseAddr(p.CIDR)
				if err != nil {
					pf, perr := netip.ParsePrefix(p.CIDR)
					if perr != nil {
						return 0, nil, fmt.Errorf("cidr %q: want an address", p.CIDR)
					}
					a = pf.Addr()
				}
				return snap.IdentityForIP(a), nil, nil
			}
			id, _ := epOf(p)
			ep, _ := snap.Endpoint(id)
			return ep.Identity, ep, nil
		}
		src, srcEP, err := peerID(f.From)
		if err != nil {
			return nil, nil, fmt.Errorf("flow %q: from: %w", f.Name, err)
		}
		dst, dstEP, err := peerID(f.To)
		if err != nil {
			return nil, nil, fmt.Errorf("flow %q: to: %w", f.Name, err)
		}
		out = append(out, Peers{Src: src, Dst: dst, SrcEP: srcEP, DstEP: dstEP})
	}
	return snap, out, nil
}

type evaluator struct {
	snap  *policy.Snapshot
	opts  Options
	cache map[*policy.L7Selection]any
}

func (e *evaluator) flow(f Flow, src, dst policy.NumericIdentity, srcEP, dstEP *policy.EndpointPolicy) Result {
	proto, _ := policy.ParseProtocol(cmpOr(f.Protocol, "TCP"))
	port := uint16(f.Port)
	var notes []string
	for _, side := range []struct {
		d      policy.Direction
		ep     *policy.EndpointPolicy
		remote policy.NumericIdentity
	}{{policy.Egress, srcEP, dst}, {policy.Ingress, dstEP, src}} {
		if side.ep == nil {
			continue
		}
		dp := side.ep.Direction(side.d)
		dec := dp.Lookup(side.remote, proto, port, side.ep.Audit)
		where := string(side.d) + " of " + endpointName(side.ep.Labels)
		switch dec.Verdict {
		case policy.VerdictDenied:
			return Result{Name: f.Name, Verdict: VerdictDenied, Reason: where + ": " + dec.Reason}
		case policy.VerdictAudited:
			notes = append(notes, where+": "+dec.Reason)
		case policy.VerdictAllowed:
			notes = append(notes, where+": "+dec.Reason)
		case policy.VerdictRedirect:
			ok, reason, err := e.l7(f, dec)
			if err != nil {
				return Result{Name: f.Name, Verdict: VerdictError, Reason: where + ": " + err.Error()}
			}
			if !ok {
				return Result{Name: f.Name, Verdict: VerdictDenied, Reason: where + ": " + reason}
			}
			notes = append(notes, where+": "+reason)
		}
	}
	if len(notes) == 0 {
		notes = append(notes, "neither side is a ward endpoint")
	}
	return Result{Name: f.Name, Verdict: VerdictAllowed, Reason: strings.Join(notes, "; ")}
}

// l7 decides a redirected flow with the L7 selections that apply
// (policy.DirectionPolicy.L7, the definition the proxies use).
func (e *evaluator) l7(f Flow, dec policy.Decision) (bool, string, error) {
	switch dec.Outcome {
	case l7.AllowAll:
		return true, fmt.Sprintf("allowed by %s L7 policy (all requests) of %s", dec.Kind, origins(dec.Selections[0])), nil
	case l7.NoRule:
		return false, "redirected to the proxy but no L7 policy applies to this peer", nil
	}
	kind := dec.Kind
	var errs []string
	for _, s := range dec.Selections {
		if len(s.ServerNames) > 0 {
			if f.SNI == "" {
				errs = append(errs, "serverNames require TLS with an SNI")
				continue
			}
			if !sniMatches(s.ServerNames, f.SNI) {
				errs = append(errs, fmt.Sprintf("SNI %q is not one of %s", f.SNI, strings.Join(s.ServerNames, ", ")))
				continue
			}
		}
		if s.AllowAll || kind == l7.KindTLS {
			return true, fmt.Sprintf("allowed by %s L7 policy (all requests) of %s", kind, origins(s)), nil
		}
		ok, reason, err := e.match(kind, f, s)
		if err != nil {
			return false, "", err
		}
		if ok {
			return true, reason + " by " + origins(s), nil
		}
		errs = append(errs, reason)
	}
	slices.Sort(errs)
	return false, strings.Join(slices.Compact(errs), "; "), nil
}

// endpointName is namespace/labels without the k8s: source.
func endpointName(ls policy.Labels) string {
	ns, _ := ls.Get(policy.SourceK8s, policy.LabelNamespace)
	var parts []string
	for _, l := range ls {
		if l.Source == policy.SourceK8s && l.Key == policy.LabelNamespace {
			continue
		}
		s := l.Key
		if l.Value != "" {
			s += "=" + l.Value
		}
		if l.Source != policy.SourceK8s {
			s = l.Source + ":" + s
		}
		parts = append(parts, s)
	}
	return ns + "/" + strings.Join(parts, ",")
}

func origins(s *policy.L7Selection) string {
	var o []string
	for _, x := range s.Origins {
		o = append(o, x.String())
	}
	sort.Strings(o)
	return strings.Join(o, ", ")
}

func (e *evaluator) match(kind l7.Kind, f Flow, s *policy.L7Selection) (bool, string, error) {
	switch kind {
	case l7.KindHTTP:
		if f.HTTP == nil {
			return false, "L7 http rules apply; the flow has no http request", nil
		}
		return e.matchHTTP(f.HTTP, s)
	case l7.KindKafka:
		if f.Kafka == nil {
			return false, "L7 kafka rules apply; the flow has no kafka request", nil
		}
		return e.matchKafka(f.Kafka, s)
	case l7.KindDNS:
		if f.DNS == nil {
			return false, "L7 dns rules apply; the flow has no dns query", nil
		}
		return e.matchDNS(f.DNS, s)
	}
	return false, "", fmt.Errorf("L7 protocol %q is not available in ward policy test", kind)
}

func sniMatches(names []string, sni string) bool {
	for _, n := range names {
		m, err := matchpattern.Compile(n)
		if err == nil && m.Match(sni) {
			return true
		}
	}
	return false
}

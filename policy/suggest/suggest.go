// Package suggest turns recorded policy verdicts (Hubble flows with verdict
// AUDIT, or DROPPED by policy) into the CiliumNetworkPolicies that would
// allow exactly that traffic, as the seed's "Creating Policies from
// Verdicts" guide writes them by hand:
//
//   - one policy per endpoint that received (ingress) or sent (egress) the
//     traffic, its endpointSelector the endpoint's identity-relevant labels
//     (Cilium's default label filter: pod-template-hash and such dropped;
//     the namespace is the policy's); for the node itself (reserved:host,
//     the host firewall's verdicts) a CiliumClusterwideNetworkPolicy whose
//     nodeSelector is the node's labels, L3/L4 only as host policies are;
//   - per peer, fromEndpoints/toEndpoints with the peer's identity-relevant
//     labels (a peer in another namespace gets its namespace label),
//     fromEntities/toEntities for reserved identities (world, host,
//     remote-node, ...), fromCIDR/toCIDR for CIDR identities and, on egress,
//     for world addresses (the flow's IP, /32 or /128);
//   - toPorts with the destination ports and protocols seen, and L7 rules
//     when the verdict was taken at L7: HTTP method and path (the path as a
//     regular expression matching it literally; rules match the whole
//     path), DNS names, Kafka API keys and topics.
//
// Replies (is_reply), flows dropped for another reason than policy, and
// flows without a direction are ignored. The output is deterministic:
// policies, rules, peers, ports and L7 rules are sorted.
package suggest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/wardproxy/ward/policy"
)

// ReadHubbleJSON reads `hubble observe -o json` output (one GetFlowsResponse
// per line, or bare Flow objects); lines without a flow (lost events, node
// status) are skipped.
func ReadHubbleJSON(r io.Reader) ([]*flowpb.Flow, error) {
	var out []*flowpb.Flow
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	opts := protojson.UnmarshalOptions{DiscardUnknown: true}
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var resp observerpb.GetFlowsResponse
		if err := opts.Unmarshal(line, &resp); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if f := resp.GetFlow(); f != nil {
			out = append(out, f)
			continue
		}
		if bytes.Contains(line, []byte(`"flow"`)) || bytes.Contains(line, []byte(`"lost_events"`)) || bytes.Contains(line, []byte(`"node_status"`)) {
			continue
		}
		// A bare Flow (hubble observe -o jsonpb of older versions).
		var f flowpb.Flow
		if err := opts.Unmarshal(line, &f); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		out = append(out, &f)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read flows: %w", err)
	}
	return out, nil
}

// Relevant reports whether f is a policy verdict a suggestion should
// allow: AUDIT, or DROPPED by policy (at L3/L4 or L7), not a reply.
func Relevant(f *flowpb.Flow) bool {
	if f.GetIsReply().GetValue() {
		return false
	}
	switch f.GetTrafficDirection() {
	case flowpb.TrafficDirection_INGRESS, flowpb.TrafficDirection_EGRESS:
	default:
		return false
	}
	switch f.GetVerdict() {
	case flowpb.Verdict_AUDIT:
		return true
	case flowpb.Verdict_DROPPED:
		switch f.GetDropReasonDesc() {
		case flowpb.DropReason_POLICY_DENIED, flowpb.DropReason_POLICY_DENY:
			return true
		case flowpb.DropReason_DROP_REASON_UNKNOWN:
			return f.GetL7() != nil // L7 denials carry no datapath reason
		}
	}
	return false
}

// ForPod keeps the flows whose subject (the destination of an ingress
// flow, the source of an egress one) is the pod "namespace/name" (a name
// alone: in any namespace).
func ForPod(flows []*flowpb.Flow, pod string) []*flowpb.Flow {
	ns, name, ok := strings.Cut(pod, "/")
	if !ok {
		ns, name = "", pod
	}
	var out []*flowpb.Flow
	for _, f := range flows {
		ep := f.GetDestination()
		if f.GetTrafficDirection() == flowpb.TrafficDirection_EGRESS {
			ep = f.GetSource()
		}
		if ep.GetPodName() == name && (ns == "" || ep.GetNamespace() == ns) {
			out = append(out, f)
		}
	}
	return out
}

// subject is an endpoint the suggestion applies to.
type subject struct {
	namespace string
	labels    map[string]string // identity-relevant, namespace excluded
	name      string            // a name for the policy
	// host: the node itself (reserved:host): a clusterwide host policy
	// whose nodeSelector is the node's labels.
	host bool
}

// peerKind is how a peer is selected.
type peerKind int

const (
	peerEndpoints peerKind = iota
	peerEntity
	peerCIDR
)

type peer struct {
	kind   peerKind
	labels map[string]string // peerEndpoints
	value  string            // entity or CIDR
}

func (p peer) key() string {
	return strconv.Itoa(int(p.kind)) + "|" + labelsKey(p.labels) + "|" + p.value
}

type portKey struct {
	proto string
	port  uint32
}

// section collects one peer's ports and L7 rules of one direction.
type section struct {
	peer  peer
	ports map[portKey]*portRules
}

type portRules struct {
	http  []policy.PortRuleHTTP
	dns   []policy.PortRuleDNS
	kafka []policy.PortRuleKafka
	l4    bool // an L3/L4 verdict: the port itself, without L7 rules
}

type draft struct {
	subj    subject
	ingress map[string]*section
	egress  map[string]*section
}

// Suggest returns the policies allowing the relevant flows of flows, one per
// subject endpoint, sorted by namespace and labels; none when no flow is
// relevant.
func Suggest(flows []*flowpb.Flow) ([]*policy.Policy, error) {
	filter, err := policy.NewLabelFilter(nil, nil)
	if err != nil {
		return nil, fmt.Errorf("default label filter: %w", err)
	}
	drafts := map[string]*draft{}
	for _, f := range flows {
		if !Relevant(f) {
			continue
		}
		ingress := f.GetTrafficDirection() == flowpb.TrafficDirection_INGRESS
		local, remote := f.GetDestination(), f.GetSource()
		remoteIP := f.GetIP().GetSource()
		if !ingress {
			local, remote = f.GetSource(), f.GetDestination()
			remoteIP = f.GetIP().GetDestination()
		}
		subj, ok := subjectOf(local, filter)
		if !ok {
			continue
		}
		// A clusterwide (host) policy's peers name their namespace.
		pr, ok := peerOf(remote, remoteIP, subj.namespace, ingress, filter)
		if !ok {
			continue
		}
		dk := strconv.FormatBool(subj.host) + "/" + subj.namespace + "/" + labelsKey(subj.labels)
		d := drafts[dk]
		if d == nil {
			d = &draft{subj: subj, ingress: map[string]*section{}, egress: map[string]*section{}}
			drafts[dk] = d
		}
		secs := d.egress
		if ingress {
			secs = d.ingress
		}
		s := secs[pr.key()]
		if s == nil {
			s = &section{peer: pr, ports: map[portKey]*portRules{}}
			secs[pr.key()] = s
		}
		addPort(s, f)
	}
	keys := make([]string, 0, len(drafts))
	for k := range drafts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []*policy.Policy
	names := map[string]int{}
	for _, k := range keys {
		d := drafts[k]
		p := d.policy()
		// Two subjects may share a name in a namespace: number them.
		nk := p.Metadata.Namespace + "/" + p.Metadata.Name
		if n := names[nk]; n > 0 {
			p.Metadata.Name += "-" + strconv.Itoa(n+1)
		}
		names[nk]++
		out = append(out, p)
	}
	return out, nil
}

// relevantLabels parses Hubble's source:key=value labels: the k8s
// identity-relevant ones (Cilium's default filter) without the namespace
// label and the io.cilium.k8s.policy.* ones (service account, cluster: the
// policy's namespace scopes them already), the namespace, and the first
// reserved label's key.
func relevantLabels(ls []string, filter *policy.LabelFilter) (labels map[string]string, ns, reserved string) {
	labels = map[string]string{}
	for _, s := range ls {
		l := policy.ParseLabel(s, policy.SourceK8s)
		switch {
		case l.Source == policy.SourceReserved:
			if reserved == "" {
				reserved = l.Key
			}
		case l.Source != policy.SourceK8s:
		case l.Key == policy.LabelNamespace:
			ns = l.Value
		case !strings.HasPrefix(l.Key, "io.cilium.k8s.policy.") && filter.Relevant(l):
			labels[l.Key] = l.Value
		}
	}
	return labels, ns, reserved
}

func subjectOf(ep *flowpb.Endpoint, filter *policy.LabelFilter) (subject, bool) {
	labels, ns, reserved := relevantLabels(ep.GetLabels(), filter)
	if reserved == "host" {
		// Its k8s labels are the node's.
		return subject{labels: labels, name: "host", host: true}, true
	}
	if len(labels) == 0 {
		return subject{}, false
	}
	if ep.GetNamespace() != "" {
		ns = ep.GetNamespace()
	}
	if ns == "" {
		ns = "default"
	}
	name := ""
	for _, k := range []string{"app.kubernetes.io/name", "app", "k8s-app", "class", "name"} {
		if v := labels[k]; v != "" {
			name = v
			break
		}
	}
	if name == "" {
		name = ep.GetPodName()
	}
	if name == "" {
		name = labels[sortedKeys(labels)[0]]
	}
	return subject{namespace: ns, labels: labels, name: dnsName(name)}, true
}

// entities are the reserved identities a rule names as an entity.
var entities = map[string]string{
	"world": "world", "world-ipv4": "world", "world-ipv6": "world", "host": "host",
	"remote-node": "remote-node", "kube-apiserver": "kube-apiserver", "ingress": "ingress",
	"health": "health", "init": "init", "unmanaged": "unmanaged",
}

// peerOf selects the other side of a flow: its CIDR identity's prefix, its
// endpoint labels, else its entity (an address without labels is world);
// on egress, a world peer is its address.
func peerOf(ep *flowpb.Endpoint, ip, subjNS string, ingress bool, filter *policy.LabelFilter) (peer, bool) {
	for _, s := range ep.GetLabels() {
		if l := policy.ParseLabel(s, policy.SourceK8s); l.Source == policy.SourceCIDR {
			if p, err := netip.ParsePrefix(l.Key); err == nil {
				return peer{kind: peerCIDR, value: p.Masked().String()}, true
			}
		}
	}
	labels, ns, reserved := relevantLabels(ep.GetLabels(), filter)
	if len(labels) > 0 {
		if ep.GetNamespace() != "" {
			ns = ep.GetNamespace()
		}
		if ns != "" && ns != subjNS {
			labels["k8s:"+policy.LabelNamespace] = ns
		}
		return peer{kind: peerEndpoints, labels: labels}, true
	}
	if len(ep.GetLabels()) == 0 {
		reserved = "world"
	}
	ent, ok := entities[reserved]
	if !ok {
		return peer{}, false
	}
	if a, err := netip.ParseAddr(ip); err == nil && ent == "world" && !ingress {
		a = a.Unmap()
		return peer{kind: peerCIDR, value: netip.PrefixFrom(a, a.BitLen()).String()}, true
	}
	return peer{kind: peerEntity, value: ent}, true
}

func addPort(s *section, f *flowpb.Flow) {
	l4 := f.GetL4()
	var k portKey
	switch {
	case l4.GetTCP() != nil:
		k = portKey{"TCP", l4.GetTCP().GetDestinationPort()}
	case l4.GetUDP() != nil:
		k = portKey{"UDP", l4.GetUDP().GetDestinationPort()}
	case l4.GetSCTP() != nil:
		k = portKey{"SCTP", l4.GetSCTP().GetDestinationPort()}
	default:
		// ICMP and unknown: the peer without port restriction.
		k = portKey{}
	}
	pr := s.ports[k]
	if pr == nil {
		pr = &portRules{}
		s.ports[k] = pr
	}
	l7 := f.GetL7()
	switch {
	case l7.GetHttp() != nil:
		h := l7.GetHttp()
		r := policy.PortRuleHTTP{Method: h.GetMethod(), Path: regexp.QuoteMeta(urlPath(h.GetUrl()))}
		if !slices.ContainsFunc(pr.http, func(x policy.PortRuleHTTP) bool { return x.Method == r.Method && x.Path == r.Path }) {
			pr.http = append(pr.http, r)
		}
	case l7.GetDns() != nil:
		r := policy.PortRuleDNS{MatchName: strings.TrimSuffix(l7.GetDns().GetQuery(), ".")}
		if r.MatchName != "" && !slices.Contains(pr.dns, r) {
			pr.dns = append(pr.dns, r)
		}
	case l7.GetKafka() != nil: //lint:ignore SA1019 ward and Cilium fill l7.kafka
		kf := l7.GetKafka() //lint:ignore SA1019 as above
		r := policy.PortRuleKafka{APIKey: kf.GetApiKey(), Topic: kf.GetTopic()}
		if !slices.Contains(pr.kafka, r) {
			pr.kafka = append(pr.kafka, r)
		}
	default:
		pr.l4 = true
	}
}

// urlPath is the path of Hubble's http.url (scheme://host/path?query).
func urlPath(u string) string {
	if i := strings.Index(u, "://"); i >= 0 {
		u = u[i+3:]
		if j := strings.IndexByte(u, '/'); j >= 0 {
			u = u[j:]
		} else {
			u = "/"
		}
	}
	if i := strings.IndexAny(u, "?#"); i >= 0 {
		u = u[:i]
	}
	if u == "" {
		u = "/"
	}
	return u
}

func (d *draft) policy() *policy.Policy {
	rule := &policy.Rule{EndpointSelector: &policy.EndpointSelector{MatchLabels: d.subj.labels}}
	if d.subj.host {
		rule = &policy.Rule{NodeSelector: &policy.EndpointSelector{MatchLabels: d.subj.labels}}
	}
	var dirs []string
	if len(d.ingress) > 0 {
		dirs = append(dirs, "ingress")
		for _, s := range sortedSections(d.ingress) {
			r := policy.IngressRule{ToPorts: s.portRules(!d.subj.host)}
			switch s.peer.kind {
			case peerEndpoints:
				r.FromEndpoints = []policy.EndpointSelector{{MatchLabels: s.peer.labels}}
			case peerEntity:
				r.FromEntities = []string{s.peer.value}
			case peerCIDR:
				r.FromCIDR = []string{s.peer.value}
			}
			rule.Ingress = append(rule.Ingress, r)
		}
	}
	if len(d.egress) > 0 {
		dirs = append(dirs, "egress")
		for _, s := range sortedSections(d.egress) {
			r := policy.EgressRule{ToPorts: s.portRules(!d.subj.host)}
			switch s.peer.kind {
			case peerEndpoints:
				r.ToEndpoints = []policy.EndpointSelector{{MatchLabels: s.peer.labels}}
			case peerEntity:
				r.ToEntities = []string{s.peer.value}
			case peerCIDR:
				r.ToCIDR = []string{s.peer.value}
			}
			rule.Egress = append(rule.Egress, r)
		}
	}
	rule.Description = "Suggested by ward policy suggest from " + strings.Join(dirs, " and ") + " policy verdicts"
	kind := policy.KindCNP
	if d.subj.host {
		kind = policy.KindCCNP
	}
	return &policy.Policy{
		APIVersion: policy.APIVersion, Kind: kind,
		Metadata: policy.ObjectMeta{Name: d.subj.name + "-suggested", Namespace: d.subj.namespace},
		Spec:     rule,
	}
}

func sortedSections(m map[string]*section) []*section {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]*section, len(keys))
	for i, k := range keys {
		out[i] = m[k]
	}
	return out
}

// portRules is the section's toPorts: one entry per port (with l7, L7
// rules on their port); none when a flow without ports (ICMP) was seen,
// which allows the peer on every port.
func (s *section) portRules(l7 bool) []policy.PortRule {
	if _, any := s.ports[portKey{}]; any {
		return nil
	}
	keys := make([]portKey, 0, len(s.ports))
	for k := range s.ports {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b portKey) int {
		if a.port != b.port {
			return int(a.port) - int(b.port)
		}
		return strings.Compare(a.proto, b.proto)
	})
	var out []policy.PortRule
	for _, k := range keys {
		pr := s.ports[k]
		r := policy.PortRule{Ports: []policy.PortProtocol{{Port: policy.PortString(strconv.Itoa(int(k.port))), Protocol: k.proto}}}
		switch {
		case !l7:
		case len(pr.http) > 0:
			slices.SortFunc(pr.http, func(a, b policy.PortRuleHTTP) int {
				return strings.Compare(a.Path+" "+a.Method, b.Path+" "+b.Method)
			})
			r.Rules = &policy.L7Rules{HTTP: pr.http}
		case len(pr.dns) > 0:
			slices.SortFunc(pr.dns, func(a, b policy.PortRuleDNS) int { return strings.Compare(a.MatchName, b.MatchName) })
			r.Rules = &policy.L7Rules{DNS: pr.dns}
		case len(pr.kafka) > 0:
			slices.SortFunc(pr.kafka, func(a, b policy.PortRuleKafka) int {
				return strings.Compare(a.APIKey+" "+a.Topic, b.APIKey+" "+b.Topic)
			})
			r.Rules = &policy.L7Rules{Kafka: pr.kafka}
		}
		out = append(out, r)
	}
	return out
}

// YAML renders policies as a YAML stream (documents separated by ---)
// that policy.Parse accepts; it checks that it does.
func YAML(ps []*policy.Policy) ([]byte, error) {
	var buf bytes.Buffer
	for i, p := range ps {
		b, err := policyYAML(p)
		if err != nil {
			return nil, fmt.Errorf("policy %s: %w", p.Metadata.Name, err)
		}
		if i > 0 {
			buf.WriteString("---\n")
		}
		buf.Write(b)
	}
	if len(ps) == 0 {
		return nil, nil
	}
	if _, err := policy.Parse("suggested.yaml", buf.Bytes()); err != nil {
		return nil, fmt.Errorf("suggested policy does not validate: %w", err)
	}
	return buf.Bytes(), nil
}

// policyYAML renders one policy without the empty enableDefaultDeny its
// type always carries (a struct is never omitted as empty).
func policyYAML(p *policy.Policy) ([]byte, error) {
	js, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := json.Unmarshal(js, &doc); err != nil {
		return nil, err
	}
	if spec, ok := doc["spec"].(map[string]any); ok {
		if dd, ok := spec["enableDefaultDeny"].(map[string]any); ok && len(dd) == 0 {
			delete(spec, "enableDefaultDeny")
		}
	}
	return yaml.Marshal(doc)
}

// ErrNothing: no flow was a policy verdict to allow.
var ErrNothing = errors.New("no AUDIT or policy-DROPPED flows to allow")

func labelsKey(m map[string]string) string {
	var sb strings.Builder
	for _, k := range sortedKeys(m) {
		sb.WriteString(k + "=" + m[k] + ",")
	}
	return sb.String()
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// dnsName makes s a Kubernetes object name (lower case alphanumerics and
// '-', at most 50 characters to leave room for a suffix).
func dnsName(s string) string {
	var sb strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			sb.WriteRune(r)
		default:
			sb.WriteByte('-')
		}
	}
	out := strings.Trim(sb.String(), "-")
	if len(out) > 50 {
		out = strings.Trim(out[:50], "-")
	}
	if out == "" {
		out = "endpoint"
	}
	return out
}

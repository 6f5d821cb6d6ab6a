package policy

import (
	"slices"
	"sort"
	"strings"
)

// Label sources.
const (
	SourceAny      = "any"      // in selectors: matches every source
	SourceK8s      = "k8s"      // pod and namespace labels
	SourceReserved = "reserved" // reserved identities (host, world, ...)
	SourceCIDR     = "cidr"     // CIDR identities: cidr:10.0.0.0/8
	SourceFQDN     = "fqdn"     // FQDN identities: fqdn:<selector>
	SourceNode     = "node"     // node labels of the host endpoint
)

// Well-known label keys.
const (
	// LabelNamespace is the namespace label of every pod endpoint.
	LabelNamespace = "io.kubernetes.pod.namespace"
	// LabelServiceAccount holds a pod's service account.
	LabelServiceAccount = "io.cilium.k8s.policy.serviceaccount"
	// LabelCluster holds the cluster name.
	LabelCluster = "io.cilium.k8s.policy.cluster"
	// labelNamespaceLabelsPrefix prefixes namespace labels copied to pods;
	// selectors on them work only in clusterwide policies.
	labelNamespaceLabelsPrefix = "io.cilium.k8s.namespace.labels."
)

// Label is one source:key=value label.
type Label struct {
	Source string
	Key    string
	Value  string
}

// String returns source:key=value (source:key when the value is empty).
func (l Label) String() string {
	s := l.Source + ":" + l.Key
	if l.Value != "" {
		s += "=" + l.Value
	}
	return s
}

// ParseLabel parses "source:key=value", "key=value" or "key" (source
// defaults to def).
func ParseLabel(s, def string) Label {
	k, v, _ := strings.Cut(s, "=")
	src, key := splitSource(k, def)
	return Label{Source: src, Key: key, Value: v}
}

// splitSource splits "source:key" into source and key. A key without a known
// source prefix keeps def as its source.
func splitSource(k, def string) (string, string) {
	if src, key, ok := strings.Cut(k, ":"); ok && isSource(src) {
		return src, key
	}
	return def, k
}

func isSource(s string) bool {
	switch s {
	case SourceAny, SourceK8s, SourceReserved, SourceCIDR, SourceFQDN, SourceNode,
		"container", "unspec", "cilium-generated", "cidrgroup":
		return true
	}
	return false
}

// Labels is a set of labels sorted by source, key and value. Build one with
// NewLabels; a Labels value is never modified.
type Labels []Label

// NewLabels returns the sorted, de-duplicated set of ls.
func NewLabels(ls ...Label) Labels {
	out := slices.Clone(ls)
	sort.Slice(out, func(i, j int) bool { return labelLess(out[i], out[j]) })
	return slices.Compact(out)
}

// K8sLabels builds the labels of a pod endpoint: every key=value with the
// k8s source (a key may carry its own source prefix), plus the namespace
// label when namespace is not empty.
func K8sLabels(m map[string]string, namespace string) Labels {
	ls := make([]Label, 0, len(m)+1)
	for k, v := range m {
		src, key := splitSource(k, SourceK8s)
		ls = append(ls, Label{Source: src, Key: key, Value: v})
	}
	if namespace != "" {
		ls = append(ls, Label{Source: SourceK8s, Key: LabelNamespace, Value: namespace})
	}
	return NewLabels(ls...)
}

func labelLess(a, b Label) bool {
	if a.Source != b.Source {
		return a.Source < b.Source
	}
	if a.Key != b.Key {
		return a.Key < b.Key
	}
	return a.Value < b.Value
}

// String returns the labels joined by ",".
func (ls Labels) String() string {
	parts := make([]string, len(ls))
	for i, l := range ls {
		parts[i] = l.String()
	}
	return strings.Join(parts, ",")
}

// Strings returns each label's String.
func (ls Labels) Strings() []string {
	parts := make([]string, len(ls))
	for i, l := range ls {
		parts[i] = l.String()
	}
	return parts
}

// Has reports whether ls holds a label with source and key (source
// SourceAny matches every source).
func (ls Labels) Has(source, key string) bool {
	for _, l := range ls {
		if l.Key == key && (source == SourceAny || l.Source == source) {
			return true
		}
	}
	return false
}

// Get returns the value of the first label with source and key.
func (ls Labels) Get(source, key string) (string, bool) {
	for _, l := range ls {
		if l.Key == key && (source == SourceAny || l.Source == source) {
			return l.Value, true
		}
	}
	return "", false
}

// requirement is one compiled selector term.
type requirement struct {
	source string // SourceAny matches any source
	key    string
	op     string
	values []string // sorted
}

func (r requirement) matches(ls Labels) bool {
	switch r.op {
	case OpExists:
		return ls.Has(r.source, r.key)
	case OpDoesNotExist:
		return !ls.Has(r.source, r.key)
	case OpIn:
		for _, l := range ls {
			if l.Key == r.key && (r.source == SourceAny || l.Source == r.source) {
				if _, ok := slices.BinarySearch(r.values, l.Value); ok {
					return true
				}
			}
		}
		return false
	case OpNotIn:
		for _, l := range ls {
			if l.Key == r.key && (r.source == SourceAny || l.Source == r.source) {
				if _, ok := slices.BinarySearch(r.values, l.Value); ok {
					return false
				}
			}
		}
		return true
	}
	return false
}

func (r requirement) String() string {
	k := r.source + ":" + r.key
	switch r.op {
	case OpExists:
		return k
	case OpDoesNotExist:
		return "!" + k
	case OpIn:
		if len(r.values) == 1 {
			return k + "=" + r.values[0]
		}
		return k + " in (" + strings.Join(r.values, ",") + ")"
	default:
		return k + " notin (" + strings.Join(r.values, ",") + ")"
	}
}

// labelSelector is a compiled EndpointSelector: all requirements must hold.
type labelSelector struct {
	reqs []requirement // sorted by String
	key  string
	pkey string // "L" + key, the peer cache key
}

// compileSelector compiles es. Errors are reported by validation before.
func compileSelector(es *EndpointSelector) *labelSelector {
	var reqs []requirement
	for k, v := range es.MatchLabels {
		src, key := splitSource(k, SourceAny)
		reqs = append(reqs, requirement{source: src, key: key, op: OpIn, values: []string{v}})
	}
	for _, e := range es.MatchExpressions {
		src, key := splitSource(e.Key, SourceAny)
		vals := slices.Clone(e.Values)
		slices.Sort(vals)
		reqs = append(reqs, requirement{source: src, key: key, op: e.Operator, values: slices.Compact(vals)})
	}
	return newLabelSelector(reqs)
}

func newLabelSelector(reqs []requirement) *labelSelector {
	strs := make([]string, len(reqs))
	idx := make([]int, len(reqs))
	for i, r := range reqs {
		strs[i] = r.String()
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return strs[idx[a]] < strs[idx[b]] })
	sorted := make([]requirement, 0, len(reqs))
	keys := make([]string, 0, len(reqs))
	for n, i := range idx {
		if n > 0 && strs[i] == strs[idx[n-1]] {
			continue
		}
		sorted = append(sorted, reqs[i])
		keys = append(keys, strs[i])
	}
	k := "{" + strings.Join(keys, ";") + "}"
	return &labelSelector{reqs: sorted, key: k, pkey: "L" + k}
}

func (s *labelSelector) matches(ls Labels) bool {
	for _, r := range s.reqs {
		if !r.matches(ls) {
			return false
		}
	}
	return true
}

// wildcard reports whether s selects everything.
func (s *labelSelector) wildcard() bool { return len(s.reqs) == 0 }

// and returns s with the requirements of o added.
func (s *labelSelector) and(o *labelSelector) *labelSelector {
	if o == nil || len(o.reqs) == 0 {
		return s
	}
	return newLabelSelector(append(slices.Clone(s.reqs), o.reqs...))
}

// hasKey reports whether a requirement of es names key (any source, or the
// given source).
func selectorHasKey(es *EndpointSelector, key string) bool {
	for k := range es.MatchLabels {
		if _, kk := splitSource(k, SourceAny); kk == key {
			return true
		}
	}
	for _, e := range es.MatchExpressions {
		if _, kk := splitSource(e.Key, SourceAny); kk == key {
			return true
		}
	}
	return false
}

// selectorHasKeyPrefix reports whether a key of es starts with prefix.
func selectorHasKeyPrefix(es *EndpointSelector, prefix string) bool {
	for k := range es.MatchLabels {
		if _, kk := splitSource(k, SourceAny); strings.HasPrefix(kk, prefix) {
			return true
		}
	}
	for _, e := range es.MatchExpressions {
		if _, kk := splitSource(e.Key, SourceAny); strings.HasPrefix(kk, prefix) {
			return true
		}
	}
	return false
}

// withoutKeyPrefix returns the requirements of s whose key does not start
// with prefix.
func (s *labelSelector) withoutKeyPrefix(prefix string) *labelSelector {
	var keep []requirement
	for _, r := range s.reqs {
		if !strings.HasPrefix(r.key, prefix) {
			keep = append(keep, r)
		}
	}
	if len(keep) == len(s.reqs) {
		return s
	}
	return newLabelSelector(keep)
}

// selectorHasSource reports whether a key of es has the given source.
func selectorHasSource(es *EndpointSelector, source string) bool {
	for k := range es.MatchLabels {
		if s, _ := splitSource(k, SourceAny); s == source {
			return true
		}
	}
	for _, e := range es.MatchExpressions {
		if s, _ := splitSource(e.Key, SourceAny); s == source {
			return true
		}
	}
	return false
}

// RemoteNodeLabels are the labels of another node's identity under
// Cilium's enable-node-selector-labels: its Kubernetes node labels (source
// k8s) and reserved:remote-node, so that fromNodes/toNodes select it by
// its labels and fromEntities/toEntities remote-node still selects it.
func RemoteNodeLabels(m map[string]string) Labels {
	ls := K8sLabels(m, "")
	return NewLabels(append(ls, Label{Source: SourceReserved, Key: "remote-node"})...)
}

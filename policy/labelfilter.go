package policy

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
)

// LabelFilter decides which of an endpoint's labels are identity-relevant
// (Cilium's "labels" option and label prefix file, pkg/labelsfilter): only
// those make up its security identity and only those can be selected by a
// policy. The others (pod-template-hash, controller-revision-hash, the
// kubernetes.io/ labels, ...) are dropped, so pods that differ only in them
// share one identity.
//
// The default filter is Cilium 1.18's: it keeps every label except the
// ignored prefixes listed in DefaultLabelPrefixes. A user prefix without
// "!" makes the filter inclusive: then only labels matching an inclusive
// prefix (the user's or a default one: reserved, namespace, namespace
// labels, app.kubernetes.io, cluster, service account) are kept. When an
// inclusive and an ignoring prefix both match, the longer match wins.
type LabelFilter struct {
	prefixes []labelPrefix
	// inclusive: some user prefix includes (Cilium's "whitelist").
	inclusive bool
}

type labelPrefix struct {
	ignore bool
	source string
	prefix string
	expr   *regexp.Regexp
}

// DefaultLabelPrefixes are Cilium 1.18's default label prefixes
// (pkg/labelsfilter defaultLabelPrefixCfg), in its syntax:
// [source:]regexp, "!" to ignore.
var DefaultLabelPrefixes = []string{
	"reserved:.*",
	regexp.QuoteMeta(LabelNamespace),
	regexp.QuoteMeta(labelNamespaceLabelsPrefix[:len(labelNamespaceLabelsPrefix)-1]),
	regexp.QuoteMeta("app.kubernetes.io"),
	regexp.QuoteMeta(LabelCluster),
	regexp.QuoteMeta(LabelServiceAccount),
	`!io\.kubernetes`,
	`!kubernetes\.io`,
	"!" + regexp.QuoteMeta("statefulset.kubernetes.io/pod-name"),
	"!" + regexp.QuoteMeta("apps.kubernetes.io/pod-index"),
	"!" + regexp.QuoteMeta("batch.kubernetes.io/job-completion-index"),
	"!" + regexp.QuoteMeta("batch.kubernetes.io/controller-uid"),
	`!.*beta\.kubernetes\.io`,
	`!k8s\.io`,
	`!pod-template-generation`,
	`!pod-template-hash`,
	`!controller-revision-hash`,
	`!controller-uid`,
	`!annotation.*`,
	`!etcd_node`,
}

// LabelPrefixFile is the JSON of Cilium's label prefix file
// (--label-prefix-file): it replaces the default prefixes.
type LabelPrefixFile struct {
	Version  int `json:"version"`
	Prefixes []struct {
		Ignore bool   `json:"invert"`
		Prefix string `json:"prefix"`
		Source string `json:"source"`
	} `json:"valid-prefixes"`
}

// NewLabelFilter returns Cilium's filter: the default prefixes (or those of
// file, the contents of a label prefix file, when not empty) followed by
// the user's prefixes (Cilium's "labels" option). An error names the
// prefix at fault.
func NewLabelFilter(user []string, file []byte) (*LabelFilter, error) {
	f := &LabelFilter{}
	if len(file) == 0 {
		for _, s := range DefaultLabelPrefixes {
			p, err := parseLabelPrefix(s)
			if err != nil {
				return nil, fmt.Errorf("default label prefix %q: %w", s, err)
			}
			f.prefixes = append(f.prefixes, p)
		}
	} else {
		var lf LabelPrefixFile
		if err := json.Unmarshal(file, &lf); err != nil {
			return nil, fmt.Errorf("label prefix file: %w", err)
		}
		if lf.Version != 1 {
			return nil, fmt.Errorf("label prefix file: unsupported version %d (want 1)", lf.Version)
		}
		for i, lp := range lf.Prefixes {
			if lp.Prefix == "" || lp.Source == "" {
				return nil, fmt.Errorf("label prefix file: valid-prefixes[%d]: prefix and source are required", i)
			}
			expr, err := regexp.Compile(lp.Prefix)
			if err != nil {
				return nil, fmt.Errorf("label prefix file: valid-prefixes[%d]: %w", i, err)
			}
			f.prefixes = append(f.prefixes, labelPrefix{ignore: lp.Ignore, source: lp.Source, prefix: lp.Prefix, expr: expr})
			f.inclusive = f.inclusive || !lp.Ignore
		}
	}
	for i, s := range user {
		if s == "" {
			continue
		}
		p, err := parseLabelPrefix(s)
		if err != nil {
			return nil, fmt.Errorf("labels[%d] %q: %w", i, s, err)
		}
		f.prefixes = append(f.prefixes, p)
		f.inclusive = f.inclusive || !p.ignore
	}
	return f, nil
}

// parseLabelPrefix parses [source:][!]regexp as Cilium does.
func parseLabelPrefix(s string) (labelPrefix, error) {
	var p labelPrefix
	if src, rest, ok := strings.Cut(s, ":"); ok {
		p.source, p.prefix = src, rest
	} else {
		p.prefix = s
	}
	if p.prefix == "" {
		return p, fmt.Errorf("empty prefix")
	}
	if p.prefix[0] == '!' {
		p.ignore, p.prefix = true, p.prefix[1:]
	}
	expr, err := regexp.Compile(p.prefix)
	if err != nil {
		return p, fmt.Errorf("invalid regular expression: %w", err)
	}
	p.expr = expr
	return p, nil
}

// matches reports whether p matches l at the start of its key, and how
// long the match is.
func (p labelPrefix) matches(l Label) (bool, int) {
	if p.source != "" && p.source != l.Source {
		return false, 0
	}
	loc := p.expr.FindStringIndex(l.Key)
	if loc == nil || loc[0] != 0 {
		return false, 0
	}
	return true, loc[1]
}

// Relevant reports whether l is identity-relevant.
func (f *LabelFilter) Relevant(l Label) bool {
	included, ignored := 0, 0
	for _, p := range f.prefixes {
		m, n := p.matches(l)
		if !m {
			continue
		}
		if p.ignore {
			if ignored == 0 || n < ignored {
				ignored = n
			}
		} else if n > included {
			included = n
		}
	}
	return (!f.inclusive && ignored == 0) || included > ignored
}

// Filter returns the identity-relevant labels of ls (ls itself when all
// are).
func (f *LabelFilter) Filter(ls Labels) Labels {
	if f == nil {
		return ls
	}
	keep := 0
	for _, l := range ls {
		if f.Relevant(l) {
			keep++
		}
	}
	if keep == len(ls) {
		return ls
	}
	out := make(Labels, 0, keep)
	for _, l := range ls {
		if f.Relevant(l) {
			out = append(out, l)
		}
	}
	return out
}

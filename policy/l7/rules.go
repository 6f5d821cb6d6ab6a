package l7

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
)

// Rules is the rules block of a toPorts entry. At most one of HTTP, Kafka,
// DNS and L7Proto (a generic protocol, with its key/value rules in L7) may
// be set on one port.
type Rules struct {
	HTTP    []HTTPRule    `json:"http,omitempty"`
	Kafka   []KafkaRule   `json:"kafka,omitempty"`
	DNS     []DNSRule     `json:"dns,omitempty"`
	L7Proto string        `json:"l7proto,omitempty"`
	L7      []GenericRule `json:"l7,omitempty"`
}

// Kind returns the protocol kind r holds rules for: KindHTTP, KindKafka,
// KindDNS or KindGeneric (an l7proto), and KindNone when r is nil or holds
// none of them.
func (r *Rules) Kind() Kind {
	switch {
	case r == nil:
		return KindNone
	case r.HTTP != nil:
		return KindHTTP
	case r.Kafka != nil:
		return KindKafka
	case r.DNS != nil:
		return KindDNS
	case r.L7Proto != "":
		return KindGeneric
	}
	return KindNone
}

// Empty reports whether r holds no rule at all (a port with such a block
// allows every request).
func (r *Rules) Empty() bool {
	return r == nil || len(r.HTTP) == 0 && len(r.Kafka) == 0 && len(r.DNS) == 0 && len(r.L7) == 0
}

// WithHeaderMatches returns r with the headerMatches entries f replaces:
// f gets each non-nil entry and returns its replacement, or nil to keep
// it. r is never modified: the result is a copy sharing what was not
// replaced, or r itself when nothing was (nil stays nil).
func (r *Rules) WithHeaderMatches(f func(*HeaderMatch) *HeaderMatch) *Rules {
	if r == nil {
		return nil
	}
	var out *Rules
	for i, h := range r.HTTP {
		cloned := false // out.HTTP[i].HeaderMatches is the copy's own
		for j, hm := range h.HeaderMatches {
			if hm == nil {
				continue
			}
			n := f(hm)
			if n == nil {
				continue
			}
			if out == nil {
				c := *r
				c.HTTP = slices.Clone(r.HTTP)
				out = &c
			}
			if !cloned {
				out.HTTP[i].HeaderMatches = slices.Clone(h.HeaderMatches)
				cloned = true
			}
			out.HTTP[i].HeaderMatches[j] = n
		}
	}
	if out == nil {
		return r
	}
	return out
}

// HTTPRule is one HTTP rule. Every non-empty field must match for the rule
// to match; an empty rule matches every request. Path, Method and Host are
// RE2 expressions matched against the whole value (anchored; see Regex).
// Path is matched against the request's :path, query included.
type HTTPRule struct {
	Path          string         `json:"path,omitempty"`
	Method        string         `json:"method,omitempty"`
	Host          string         `json:"host,omitempty"`
	Headers       []string       `json:"headers,omitempty"`
	HeaderMatches []*HeaderMatch `json:"headerMatches,omitempty"`
}

// MismatchAction says what to do with a request whose header differs from a
// HeaderMatch. The empty action denies the request.
type MismatchAction string

// The mismatch actions Cilium defines.
const (
	MismatchLog     MismatchAction = "LOG"
	MismatchAdd     MismatchAction = "ADD"
	MismatchDelete  MismatchAction = "DELETE"
	MismatchReplace MismatchAction = "REPLACE"
)

// Known reports whether a is "" or one of the four actions.
func (a MismatchAction) Known() bool {
	switch a {
	case "", MismatchLog, MismatchAdd, MismatchDelete, MismatchReplace:
		return true
	}
	return false
}

// HeaderMatch requires header Name to have Value, or the value held by
// Secret (the secret wins when both are set).
type HeaderMatch struct {
	Mismatch MismatchAction `json:"mismatch,omitempty"`
	Name     string         `json:"name"`
	Secret   *Secret        `json:"secret,omitempty"`
	Value    string         `json:"value,omitempty"`
}

// Secret references a Kubernetes-style secret by namespace and name.
type Secret struct {
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

// KafkaRule is one Kafka rule. Role (produce|consume) and APIKey are
// mutually exclusive; APIVersion is a decimal string; Topic is at most
// MaxTopicLen characters of [a-zA-Z0-9._-]. An empty rule matches every
// request.
type KafkaRule struct {
	Role       string `json:"role,omitempty"`
	APIKey     string `json:"apiKey,omitempty"`
	APIVersion string `json:"apiVersion,omitempty"`
	ClientID   string `json:"clientID,omitempty"`
	Topic      string `json:"topic,omitempty"`
}

// DNSRule is one DNS rule: an exact name or a pattern where '*' matches
// within one label ('*' alone matches every name, a leading '**.' any depth
// of subdomains).
type DNSRule struct {
	MatchName    string `json:"matchName,omitempty"`
	MatchPattern string `json:"matchPattern,omitempty"`
}

// GenericRule is one rule of a generic L7 protocol named by Rules.L7Proto:
// key/value pairs the protocol's parser would interpret.
type GenericRule map[string]string

// Encode is the wire form of r that Decode reads back: its JSON encoding
// (Cilium's field names).
func Encode(r *Rules) string {
	b, err := json.Marshal(r)
	if err != nil {
		// Unreachable: the types hold only strings, slices and maps of
		// strings. Fail closed: Decode refuses what follows.
		return "!" + err.Error()
	}
	return string(b)
}

// Decode reads rules written by Encode. A field it does not know is an
// error: rules from a newer agent are refused, never half understood.
func Decode(s string) (*Rules, error) {
	dec := json.NewDecoder(bytes.NewReader([]byte(s)))
	dec.DisallowUnknownFields()
	var r Rules
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("decode l7 rules: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("decode l7 rules: trailing data")
	}
	return &r, nil
}

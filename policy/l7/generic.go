package l7

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// genericKey describes one key of a generic protocol's rules.
type genericKey struct {
	values []string // the allowed values (lower case); nil: any
	regex  bool     // the value is a regular expression
	group  string   // keys of one group are mutually exclusive
}

// Generic is the registry of generic L7 protocols (`l7proto`) ward has a
// parser for inside Envoy, with the keys their rules take (Cilium's names):
// memcache (filters/memcache: text and binary memcached) and r2d2 (the
// line-based test protocol of Cilium's proxylib, filters/r2d2).
var Generic = map[string]map[string]genericKey{
	"memcache": {
		"command": {values: []string{
			"get", "gets", "gat", "gats", "set", "add", "replace", "append", "prepend", "cas",
			"delete", "incr", "decr", "touch", "flush_all", "version", "stats", "verbosity", "quit",
			"noop", "mg", "ms", "md", "ma", "mn", "me",
		}},
		"keyExact":  {group: "key"},
		"keyPrefix": {group: "key"},
		"keyRegex":  {regex: true, group: "key"},
	},
	"r2d2": {
		"cmd":  {values: []string{"read", "write", "halt", "reset"}},
		"file": {regex: true},
	},
}

// GenericValues returns the allowed values of a key of proto (nil: any).
func GenericValues(proto, key string) []string { return Generic[proto][key].values }

func checkGeneric(proto string, rules []GenericRule, add func(path, value, msg string)) {
	keys, ok := Generic[proto]
	if !ok {
		known := make([]string, 0, len(Generic))
		for k := range Generic {
			known = append(known, k)
		}
		sort.Strings(known)
		add("l7proto", proto, fmt.Sprintf("unknown l7proto %q (ward has parsers for: %s)", proto, strings.Join(known, ", ")))
		return
	}
	for i, r := range rules {
		p := fmt.Sprintf("l7[%d]", i)
		groups := map[string]string{}
		names := make([]string, 0, len(r))
		for k := range r {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			v := r[k]
			spec, ok := keys[k]
			if !ok {
				valid := make([]string, 0, len(keys))
				for n := range keys {
					valid = append(valid, n)
				}
				sort.Strings(valid)
				add(p+"."+k, "", fmt.Sprintf("unknown key %q of l7proto %s (want %s)", k, proto, strings.Join(valid, ", ")))
				continue
			}
			if spec.values != nil {
				found := false
				for _, a := range spec.values {
					found = found || a == strings.ToLower(v)
				}
				if !found {
					add(p+"."+k, v, fmt.Sprintf("unknown %s %q (want one of %s)", k, v, strings.Join(spec.values, ", ")))
				}
			}
			if spec.regex {
				if _, err := regexp.Compile(v); err != nil {
					add(p+"."+k, short(v), fmt.Sprintf("invalid %s regex: %v", k, err))
				}
			}
			if spec.group != "" {
				if other, dup := groups[spec.group]; dup {
					add(p, "", fmt.Sprintf("%s and %s are mutually exclusive", other, k))
				}
				groups[spec.group] = k
			}
		}
	}
}

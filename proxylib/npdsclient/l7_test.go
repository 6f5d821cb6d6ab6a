package npdsclient

import (
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/xds/npds"
)

// The tests of this package build and read a rule's L7 part only through
// these helpers, the one place that knows its wire shape.

// withHTTP gives r an HTTP L7 part allowing paths.
func withHTTP(r *npds.PortNetworkPolicyRule, paths ...string) *npds.PortNetworkPolicyRule {
	hr := []l7.HTTPRule{}
	for _, p := range paths {
		hr = append(hr, l7.HTTPRule{Path: p})
	}
	r.L7 = npds.HTTP(hr...)
	return r
}

// withOtherL7 gives r a non-HTTP L7 part.
func withOtherL7(r *npds.PortNetworkPolicyRule) *npds.PortNetworkPolicyRule {
	r.L7 = npds.Kafka(l7.KafkaRule{Topic: "t"})
	return r
}

// httpPaths returns the paths of r's HTTP L7 part; ok is false when r has
// no HTTP part.
func httpPaths(r *npds.PortNetworkPolicyRule) (paths []string, ok bool) {
	if r.GetL7() == nil {
		return nil, false
	}
	rules, err := r.GetL7().Decode()
	if err != nil || rules.Kind() != l7.KindHTTP {
		return nil, false
	}
	for _, h := range rules.HTTP {
		paths = append(paths, h.Path)
	}
	return paths, true
}

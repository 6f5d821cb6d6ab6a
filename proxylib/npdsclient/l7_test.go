package npdsclient

import "github.com/wardproxy/ward/xds/npds"

// The tests of this package build and read a rule's L7 part only through
// these helpers, the one place that knows its wire shape.

// withHTTP gives r an HTTP L7 part allowing paths.
func withHTTP(r *npds.PortNetworkPolicyRule, paths ...string) *npds.PortNetworkPolicyRule {
	hr := &npds.HttpRules{}
	for _, p := range paths {
		hr.HttpRules = append(hr.HttpRules, &npds.HttpRule{Path: p})
	}
	r.L7 = &npds.PortNetworkPolicyRule_HttpRules{HttpRules: hr}
	return r
}

// withOtherL7 gives r a non-HTTP L7 part.
func withOtherL7(r *npds.PortNetworkPolicyRule) *npds.PortNetworkPolicyRule {
	r.L7 = &npds.PortNetworkPolicyRule_KafkaRules{KafkaRules: &npds.KafkaRules{}}
	return r
}

// httpPaths returns the paths of r's HTTP L7 part; ok is false when r has
// no HTTP part.
func httpPaths(r *npds.PortNetworkPolicyRule) (paths []string, ok bool) {
	hr := r.GetHttpRules()
	if hr == nil {
		return nil, false
	}
	for _, h := range hr.GetHttpRules() {
		paths = append(paths, h.GetPath())
	}
	return paths, true
}

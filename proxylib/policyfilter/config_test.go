package policyfilter

import (
	"strings"
	"testing"
)

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"ok", `{"xds_socket":"/s","node":"n","direction":"egress","port":80}`, ""},
		{"unknown field", `{"xds_socket":"/s","node":"n","prot":80}`, `unknown field "prot"`},
		{"missing socket", `{"node":"n"}`, "xds_socket is required"},
		{"bad direction", `{"xds_socket":"/s","node":"n","direction":"sideways"}`, "direction"},
		{"not json", `nope`, "filter_config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig([]byte(tc.in))
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("parseConfig(%q) = %v; want %q", tc.in, err, tc.want)
			}
		})
	}
}

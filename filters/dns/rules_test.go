package dns

import (
	"strings"
	"testing"

	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/policy/matchpattern"
)

func TestCompileAllow(t *testing.T) {
	tests := []struct {
		name    string
		rules   []policy.PortRuleDNS
		allow   []string
		deny    []string
		wantErr bool
	}{
		{
			name:  "mediabot",
			rules: []policy.PortRuleDNS{{MatchName: "api.github.com"}, {MatchPattern: "*.github.test"}},
			allow: []string{"api.github.com.", "API.GITHUB.COM", "support.github.test.", "api.github.test"},
			deny:  []string{"github.com.", "github.test.", "a.b.github.test.", "api.github.com.evil."},
		},
		{
			name:  "both fields",
			rules: []policy.PortRuleDNS{{MatchName: "a.test", MatchPattern: "b*.test"}},
			allow: []string{"a.test.", "bee.test."},
			deny:  []string{"c.test."},
		},
		{
			name:  "star allows all",
			rules: []policy.PortRuleDNS{{MatchPattern: "*"}},
			allow: []string{"anything.example.", "."},
		},
		{
			name:  "no rules allow all, as in Cilium",
			rules: nil,
			allow: []string{"a.test.", "anything.example."},
		},
		{
			name:  "indexed patterns",
			rules: []policy.PortRuleDNS{{MatchPattern: "*.svc.example.test"}, {MatchPattern: "api.*.test"}, {MatchPattern: "**.deep.test"}, {MatchPattern: "exact.test"}, {MatchPattern: "x*y.test"}},
			allow: []string{"a.svc.example.test.", "api.github.test.", "a.b.deep.test", "EXACT.test.", "xzy.test"},
			deny:  []string{"svc.example.test.", "a.b.svc.example.test", "deep.test.", "api.test.", "exact.test.x", "xz.test"},
		},
		{name: "empty rule", rules: []policy.PortRuleDNS{{}}, wantErr: true},
		{name: "bad pattern", rules: []policy.PortRuleDNS{{MatchPattern: "a[.test"}}, wantErr: true},
		{name: "bad name", rules: []policy.PortRuleDNS{{MatchName: "a..test"}}, wantErr: true},
		{name: "star in name", rules: []policy.PortRuleDNS{{MatchName: "*.test"}}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Compile(tt.rules)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Compile(%+v) = %v; wantErr %v", tt.rules, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			for _, n := range tt.allow {
				if !m.Allow(n) {
					t.Errorf("Allow(%q) = false; want true", n)
				}
			}
			for _, n := range tt.deny {
				if m.Allow(n) {
					t.Errorf("Allow(%q) = true; want false", n)
				}
			}
		})
	}
}

func TestCompileReportsAll(t *testing.T) {
	_, err := Compile([]policy.PortRuleDNS{{}, {MatchPattern: "a["}})
	if err == nil {
		t.Fatal("Compile = nil; want errors")
	}
	for _, want := range []string{"dns[0]", "dns[1].matchPattern"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Compile error %q does not mention %q", err, want)
		}
	}
}

// FuzzAllowIndex checks the suffix index against matching every pattern.
func FuzzAllowIndex(f *testing.F) {
	f.Add("*.svc.example.test", "a.svc.example.test.")
	f.Add("**.deep.test", "a.b.deep.test")
	f.Add("api.*.test", "api.x.test")
	f.Add("x*y.test", "xzy.TEST")
	f.Fuzz(func(t *testing.T, pattern, name string) {
		p, err := matchpattern.Compile(pattern)
		if err != nil {
			return
		}
		m, err := Compile([]policy.PortRuleDNS{{MatchPattern: pattern}, {MatchPattern: "*.unrelated.test"}})
		if err != nil {
			t.Fatalf("Compile(%q) = %v; matchpattern accepted it", pattern, err)
		}
		if got, want := m.Allow(name), p.Match(name); got != want {
			t.Fatalf("Allow(%q) with %q = %v; Match = %v", name, pattern, got, want)
		}
	})
}

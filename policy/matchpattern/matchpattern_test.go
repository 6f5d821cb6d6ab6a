package matchpattern

import (
	"regexp"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	tests := []struct {
		name    string
		pattern string
		match   []string
		noMatch []string
	}{
		{
			name:    "exact",
			pattern: "api.github.com",
			match:   []string{"api.github.com", "api.github.com.", "API.GitHub.Com", "api.github.com"},
			noMatch: []string{"github.com", "xapi.github.com", "a.api.github.com", "api.github.co", ""},
		},
		{
			name:    "trailing dot in pattern",
			pattern: "API.github.com.",
			match:   []string{"api.github.com", "api.github.com."},
		},
		{
			name:    "star label",
			pattern: "*.cilium.io",
			match:   []string{"sub.cilium.io", "SUB.cilium.io.", "a-b_c.cilium.io"},
			noMatch: []string{"cilium.io", "a.b.cilium.io", ".cilium.io", "ciliumxio", "sub.cilium.io.evil"},
		},
		{
			name:    "star within label",
			pattern: "sub*.cilium.io",
			match:   []string{"sub.cilium.io", "subdomain.cilium.io", "sub-1.cilium.io"},
			noMatch: []string{"su.cilium.io", "xsub.cilium.io", "sub.a.cilium.io"},
		},
		{
			name:    "several stars in a label",
			pattern: "a*b*c.test",
			match:   []string{"abc.test", "aXbYc.test", "abbbc.test", "abcbc.test"},
			noMatch: []string{"ab.test", "acb.test", "abcx.test"},
		},
		{
			name:    "all",
			pattern: "*",
			match:   []string{"cilium.io", "a.b.c.d", "x", "."},
		},
		{
			name:    "any depth",
			pattern: "**.cilium.io",
			match:   []string{"a.cilium.io", "a.b.cilium.io", "A.B.C.cilium.io."},
			noMatch: []string{"cilium.io", "acilium.io", "a..cilium.io", "a.cilium.org"},
		},
		{
			name:    "any depth with star",
			pattern: "**.*.test",
			match:   []string{"a.b.test", "a.b.c.test"},
			noMatch: []string{"b.test", "test"},
		},
		{
			name:    "star does not cross non-name characters",
			pattern: "*.test",
			noMatch: []string{"a b.test", "a/b.test", "a*b.test"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Compile(tt.pattern)
			if err != nil {
				t.Fatalf("Compile(%q) = %v; want nil", tt.pattern, err)
			}
			for _, n := range tt.match {
				if !m.Match(n) {
					t.Errorf("Compile(%q).Match(%q) = false; want true", tt.pattern, n)
				}
			}
			for _, n := range tt.noMatch {
				if m.Match(n) {
					t.Errorf("Compile(%q).Match(%q) = true; want false", tt.pattern, n)
				}
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		pattern string
		ok      bool
	}{
		{name: "plain", pattern: "cilium.io", ok: true},
		{name: "star", pattern: "*", ok: true},
		{name: "leading any depth", pattern: "**.cilium.io", ok: true},
		{name: "underscore", pattern: "_srv._tcp.test", ok: true},
		{name: "empty", pattern: "", ok: false},
		{name: "blank", pattern: "  ", ok: false},
		{name: "only dot", pattern: ".", ok: false},
		{name: "empty label", pattern: "a..b", ok: false},
		{name: "regex chars", pattern: "a[b].test", ok: false},
		{name: "plus", pattern: "a+.test", ok: false},
		{name: "space inside", pattern: "a b.test", ok: false},
		{name: "double star inside", pattern: "a.**.test", ok: false},
		{name: "double star in label", pattern: "a**b.test", ok: false},
		{name: "bare any depth is all stars", pattern: "**.", ok: true},
		{name: "only stars", pattern: "**", ok: true},
		{name: "triple star prefix", pattern: "***.test", ok: true},
		{name: "too long", pattern: strings.Repeat("a.", 128) + "a", ok: false},
		{name: "long label", pattern: strings.Repeat("a", 64) + ".test", ok: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.pattern)
			if (err == nil) != tt.ok {
				t.Errorf("Validate(%q) = %v; want ok=%v", tt.pattern, err, tt.ok)
			}
		})
	}
}

// reference builds the regular expression Cilium's ToRegexp builds, as an
// independent oracle for the fuzzer.
func reference(pattern string) *regexp.Regexp {
	p := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(pattern), "."))
	if strings.Trim(p, "*") == "" {
		return regexp.MustCompile(`^.*$`)
	}
	const c = `[-a-z0-9_]`
	var b strings.Builder
	b.WriteString("^")
	if stars := len(p) - len(strings.TrimLeft(p, "*")); stars >= 2 && strings.HasPrefix(p[stars:], ".") {
		b.WriteString(`(` + c + `+[.])+`)
		p = p[stars+1:]
	}
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '*':
			b.WriteString(c + `*`)
		case '.':
			b.WriteString(`[.]`)
		default:
			b.WriteString(regexp.QuoteMeta(p[i : i+1]))
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

func FuzzMatch(f *testing.F) {
	for _, s := range [][2]string{
		{"*.cilium.io", "sub.cilium.io"},
		{"**.cilium.io", "a.b.cilium.io."},
		{"a*b*c.test", "abcbc.test"},
		{"*", "x"},
		{"api.github.com", "API.github.com."},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, name string) {
		m, err := Compile(pattern)
		if err != nil {
			return
		}
		got := m.Match(name)
		n := strings.ToLower(strings.TrimSuffix(name, "."))
		if m.all {
			if !got {
				t.Fatalf("Compile(%q).Match(%q) = false; want true", pattern, name)
			}
			return
		}
		// strings.ToLower folds non-ASCII too; DNS only folds ASCII.
		for i := 0; i < len(name); i++ {
			if name[i] >= 0x80 {
				return
			}
		}
		// Names with an empty label are not DNS names: never matched, while
		// Cilium's regular expression lets '*' match an empty label.
		if n == "" || strings.HasPrefix(n, ".") || strings.HasSuffix(n, ".") || strings.Contains(n, "..") {
			if got {
				t.Fatalf("Compile(%q).Match(%q) = true; want false for an empty label", pattern, name)
			}
			return
		}
		if want := reference(pattern).MatchString(n); got != want {
			t.Fatalf("Compile(%q).Match(%q) = %v; reference says %v", pattern, name, got, want)
		}
	})
}

func BenchmarkMatch(b *testing.B) {
	m, err := Compile("**.*.github.com")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		m.Match("a.b.api.github.com.")
	}
}

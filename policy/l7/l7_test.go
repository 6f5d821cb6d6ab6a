package l7

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestKafkaAPIKey(t *testing.T) {
	for _, tt := range []struct {
		name string
		key  int16
		ok   bool
	}{
		{"produce", 0, true},
		{"Produce", 0, true},
		{"offsets", 2, true},
		{"ListOffsets", 2, true},
		{"groupcoordinator", 10, true},
		{"createtopic", 19, true},
		{"CREATE_TOPICS", 19, true},
		{"create-topics", 19, true},
		{"describecluster", 60, true},
		{"DeleteShareGroupOffsets", 92, true},
		{"nosuchapi", 0, false},
		{"", 0, false},
	} {
		k, ok := KafkaAPIKey(tt.name)
		if k != tt.key || ok != tt.ok {
			t.Errorf("KafkaAPIKey(%q) = %d, %v; want %d, %v", tt.name, k, ok, tt.key, tt.ok)
		}
	}
	// Every key has a name that maps back to it.
	for k := int16(0); k <= 92; k++ {
		n := KafkaAPIName(k)
		if got, ok := KafkaAPIKey(n); !ok || got != k {
			t.Errorf("KafkaAPIKey(KafkaAPIName(%d) = %q) = %d, %v", k, n, got, ok)
		}
	}
}

func TestCheck(t *testing.T) {
	r := &Rules{
		HTTP: []HTTPRule{
			{Path: "nopath", Method: "(", Headers: []string{": v"}},
			{HeaderMatches: []*HeaderMatch{nil, {Mismatch: "DROP"}, {Name: "x", Secret: &Secret{Name: "s"}}, {Name: "y", Secret: &Secret{Namespace: "ns"}}}},
			{Host: strings.Repeat("h", MaxRegexLen+1)},
		},
		Kafka: []KafkaRule{
			{Role: "produce", APIKey: "fetch"},
			{Role: "admin", APIKey: "nosuch", APIVersion: "-1", Topic: "a/b"},
		},
		DNS:     []DNSRule{{}, {MatchName: "a", MatchPattern: "b"}},
		L7Proto: "x",
	}
	var got []string
	for _, p := range Check(r) {
		got = append(got, p.Path)
	}
	want := []string{
		"", "l7proto",
		"http[0].path", "http[0].method", "http[0].headers[0]",
		"http[1].headerMatches[0]", "http[1].headerMatches[1].name", "http[1].headerMatches[1].mismatch", "http[1].headerMatches[3].secret.name",
		"http[2].host",
		"kafka[0]",
		"kafka[1]", "kafka[1].role", "kafka[1].apiKey", "kafka[1].apiVersion", "kafka[1].topic",
		"dns[0]", "dns[1]",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Check paths (-want +got):\n%s", diff)
	}
	if ps := Check(&Rules{HTTP: []HTTPRule{{Path: "/a.*", Method: "GET|HEAD", Headers: []string{"X-A: b"}}}, Kafka: nil}); len(ps) != 0 {
		t.Errorf("Check(valid) = %v", ps)
	}
}

func TestEncodeDecode(t *testing.T) {
	in := &Rules{
		HTTP: []HTTPRule{{Path: "/p", Method: "GET", Host: "h", Headers: []string{"X-A: b"},
			HeaderMatches: []*HeaderMatch{{Mismatch: MismatchReplace, Name: "n", Value: "v", Secret: &Secret{Namespace: "ns", Name: "s"}}}}},
		Kafka: []KafkaRule{{Role: "produce", APIKey: "fetch", APIVersion: "3", ClientID: "c", Topic: "t"}},
		DNS:   []DNSRule{{MatchName: "a.b"}, {MatchPattern: "*.b"}},
	}
	out, err := Decode(Encode(in))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(in, out); diff != "" {
		t.Errorf("Decode(Encode(r)) (-want +got):\n%s", diff)
	}
	for _, bad := range []string{`{"http":[{"pathx":"/"}]}`, `{"http":[]} {}`, `[`, "!json: unsupported value"} {
		if _, err := Decode(bad); err == nil {
			t.Errorf("Decode(%q) = nil error; want one", bad)
		}
	}
}

type port struct {
	r     Range
	rules []*rule
}

type rule struct {
	name    string
	remotes []uint32 // nil: all
	deny    bool
	all     bool
}

func scope(r *rule, remote uint32) Scope {
	if r.remotes != nil {
		found := false
		for _, id := range r.remotes {
			found = found || id == remote
		}
		if !found {
			return ScopeNone
		}
	}
	switch {
	case r.deny:
		return ScopeDeny
	case r.all:
		return ScopeAll
	}
	return ScopeRules
}

func rangeOf(p port) (Range, []*rule) { return p.r, p.rules }

func TestSelect(t *testing.T) {
	a := &rule{name: "a", remotes: []uint32{1}}
	b := &rule{name: "b", remotes: []uint32{2}}
	all := &rule{name: "all", remotes: []uint32{3}, all: true}
	c := &rule{name: "c", remotes: []uint32{3}}
	deny := &rule{name: "deny", remotes: []uint32{4}, deny: true}
	d := &rule{name: "d", remotes: []uint32{4}}
	ports := []port{
		{Range{Proto: 6, Port: 80}, []*rule{a, all, d}},
		{Range{Proto: 6, Port: 80, End: 90}, []*rule{b, c, deny}},
		{Range{Proto: 17, Port: 53, End: 53}, []*rule{a}},
	}
	for _, tt := range []struct {
		name   string
		proto  uint8
		port   uint16
		remote uint32
		want   Outcome
		rules  []string
	}{
		{"exact port", 6, 80, 1, MatchRules, []string{"a"}},
		{"overlapping range adds up", 6, 80, 2, MatchRules, []string{"b"}},
		{"range only", 6, 85, 1, NoRule, nil},
		{"allow all wins over rules", 6, 80, 3, AllowAll, []string{"all"}},
		{"deny wins", 6, 80, 4, Deny, nil},
		{"other protocol", 17, 80, 1, NoRule, nil},
		{"any protocol", 0, 53, 1, MatchRules, []string{"a"}},
		{"nobody", 6, 80, 9, NoRule, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, rs := Select(ports, tt.proto, tt.port, tt.remote, rangeOf, scope, nil)
			var names []string
			for _, r := range rs {
				names = append(names, r.name)
			}
			if got != tt.want || !cmp.Equal(names, tt.rules) {
				t.Errorf("Select(%d, %d, %d) = %v %v; want %v %v", tt.proto, tt.port, tt.remote, got, names, tt.want, tt.rules)
			}
		})
	}
	buf := make([]*rule, 0, 4)
	if n := testing.AllocsPerRun(100, func() { Select(ports, 6, 80, 1, rangeOf, scope, buf) }); n != 0 {
		t.Errorf("Select allocates %v times with a buffer", n)
	}
}

func TestRangeContains(t *testing.T) {
	for _, tt := range []struct {
		r     Range
		proto uint8
		port  uint16
		want  bool
	}{
		{Range{Port: 0}, 6, 1234, true},
		{Range{Port: 80}, 6, 80, true},
		{Range{Port: 80}, 6, 81, false},
		{Range{Port: 80, End: 80}, 6, 80, true},
		{Range{Port: 80, End: 90}, 6, 90, true},
		{Range{Port: 80, End: 90}, 6, 91, false},
		{Range{Proto: 6, Port: 80}, 17, 80, false},
		{Range{Proto: 6, Port: 80}, 0, 80, true},
	} {
		if got := tt.r.Contains(tt.proto, tt.port); got != tt.want {
			t.Errorf("%+v.Contains(%d, %d) = %v; want %v", tt.r, tt.proto, tt.port, got, tt.want)
		}
	}
}

func TestKind(t *testing.T) {
	for _, tt := range []struct {
		r    *Rules
		want Kind
	}{
		{nil, KindNone},
		{&Rules{}, KindNone},
		{&Rules{HTTP: []HTTPRule{}}, KindHTTP},
		{&Rules{Kafka: []KafkaRule{{}}}, KindKafka},
		{&Rules{DNS: []DNSRule{{MatchName: "a"}}}, KindDNS},
		{&Rules{L7Proto: "x"}, KindGeneric},
	} {
		if got := tt.r.Kind(); got != tt.want {
			t.Errorf("%+v.Kind() = %v; want %v", tt.r, got, tt.want)
		}
	}
	for k, want := range map[Kind]bool{KindHTTP: true, KindKafka: true, KindTLS: true, KindGeneric: true, KindDNS: false, KindNone: false} {
		if k.InEnvoy() != want {
			t.Errorf("%v.InEnvoy() = %v", k, !want)
		}
	}
}

// TestWithHeaderMatches: replaced entries land in a copy; the original
// rules are never modified; nothing replaced returns the rules themselves.
func TestWithHeaderMatches(t *testing.T) {
	keep := &HeaderMatch{Name: "keep"}
	r := &Rules{HTTP: []HTTPRule{
		{Path: "/a", HeaderMatches: []*HeaderMatch{keep, nil, {Name: "swap"}}},
		{Path: "/b", HeaderMatches: []*HeaderMatch{{Name: "keep2"}}},
	}}
	swap := func(hm *HeaderMatch) *HeaderMatch {
		if hm.Name != "swap" {
			return nil
		}
		return &HeaderMatch{Name: "swapped"}
	}
	out := r.WithHeaderMatches(swap)
	if out == r || out.HTTP[0].HeaderMatches[2].Name != "swapped" || out.HTTP[0].HeaderMatches[0] != keep || out.HTTP[0].Path != "/a" {
		t.Fatalf("WithHeaderMatches = %+v; want a copy with the entry swapped, the rest shared", out.HTTP[0])
	}
	if r.HTTP[0].HeaderMatches[2].Name != "swap" {
		t.Error("the original rules were modified")
	}
	if same := r.WithHeaderMatches(func(*HeaderMatch) *HeaderMatch { return nil }); same != r {
		t.Error("nothing replaced: want the rules themselves")
	}
	if (*Rules)(nil).WithHeaderMatches(swap) != nil {
		t.Error("nil rules: want nil")
	}
}

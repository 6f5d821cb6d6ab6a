package kafka

import (
	"fmt"
	"testing"

	"github.com/wardproxy/ward/policy"
)

func TestAPIKeyByName(t *testing.T) {
	tests := []struct {
		name string
		want int16
		ok   bool
	}{
		{name: "produce", want: 0, ok: true},
		{name: "Produce", want: 0, ok: true},
		{name: "LIST_OFFSETS", want: 2, ok: true},
		{name: "offsets", want: 2, ok: true},
		{name: "createtopics", want: 19, ok: true},
		{name: "CreateTopic", want: 19, ok: true},
		{name: "deletetopic", want: 20, ok: true},
		{name: "ConsumerGroupHeartbeat", want: 68, ok: true},
		{name: "DescribeTopicPartitions", want: 75, ok: true},
		{name: "nope", ok: false},
		{name: "", ok: false},
	}
	for _, tt := range tests {
		got, ok := APIKeyByName(tt.name)
		if got != tt.want || ok != tt.ok {
			t.Errorf("APIKeyByName(%q) = %d, %v; want %d, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		name string
		rule policy.PortRuleKafka
	}{
		{name: "role and key", rule: policy.PortRuleKafka{Role: "produce", APIKey: "fetch"}},
		{name: "bad role", rule: policy.PortRuleKafka{Role: "admin"}},
		{name: "bad key", rule: policy.PortRuleKafka{APIKey: "launch"}},
		{name: "bad version", rule: policy.PortRuleKafka{APIVersion: "-1"}},
		{name: "version not int", rule: policy.PortRuleKafka{APIVersion: "v1"}},
		{name: "topic charset", rule: policy.PortRuleKafka{Topic: "a/b"}},
		{name: "topic backslash", rule: policy.PortRuleKafka{Topic: `a\b`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Compile([]policy.PortRuleKafka{tt.rule}); err == nil {
				t.Errorf("Compile(%+v) = nil error; want error", tt.rule)
			}
		})
	}
}

func TestAllow(t *testing.T) {
	empire := []policy.PortRuleKafka{
		{Role: "consume", Topic: "empire-announce"},
		{APIKey: "createtopics"},
		{APIKey: "produce", Topic: "a", ClientID: "hq"},
		{APIKey: "produce", Topic: "b", APIVersion: "9"},
	}
	m, err := Compile(empire)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		req  Request
		want bool
	}{
		{name: "fetch allowed topic", req: Request{APIKey: 1, APIVersion: 11, Topics: []string{"empire-announce"}}, want: true},
		{name: "fetch other topic", req: Request{APIKey: 1, Topics: []string{"deathstar-plans"}}, want: false},
		{name: "fetch mixed topics", req: Request{APIKey: 1, Topics: []string{"empire-announce", "deathstar-plans"}}, want: false},
		{name: "produce on consume topic", req: Request{APIKey: 0, Topics: []string{"empire-announce"}}, want: false},
		{name: "topic-less key in role", req: Request{APIKey: 11}, want: true},
		{name: "apiversions", req: Request{APIKey: 18, APIVersion: 3}, want: true},
		{name: "offset for leader epoch", req: Request{APIKey: 23, Topics: []string{"empire-announce"}}, want: true},
		{name: "key outside role", req: Request{APIKey: 20, Topics: []string{"empire-announce"}}, want: false},
		{name: "createtopics any topic", req: Request{APIKey: 19, Topics: []string{"x"}}, want: true},
		{name: "metadata all topics", req: Request{APIKey: 3, AllTopics: true}, want: false},
		{name: "client id match", req: Request{APIKey: 0, ClientID: "hq", Topics: []string{"a"}}, want: true},
		{name: "client id mismatch", req: Request{APIKey: 0, ClientID: "spy", Topics: []string{"a"}}, want: false},
		{name: "two rules cover two topics", req: Request{APIKey: 0, APIVersion: 9, ClientID: "hq", Topics: []string{"a", "b"}}, want: true},
		{name: "version mismatch", req: Request{APIKey: 0, APIVersion: 8, ClientID: "hq", Topics: []string{"a", "b"}}, want: false},
		{name: "negative key", req: Request{APIKey: -1}, want: false},
		{name: "huge key", req: Request{APIKey: 1000}, want: false},
	}
	for _, tt := range tests {
		if got := m.Allow(&tt.req); got != tt.want {
			t.Errorf("%s: Allow(%+v) = %v; want %v", tt.name, tt.req, got, tt.want)
		}
	}
}

func TestAllowEmptyAndProduceRole(t *testing.T) {
	m, err := Compile(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !m.Allow(&Request{APIKey: 20, Topics: []string{"x"}}) {
		t.Error("empty rule list denied a request; want allow all")
	}
	m, err = Compile([]policy.PortRuleKafka{{}})
	if err != nil {
		t.Fatal(err)
	}
	if !m.Allow(&Request{APIKey: 3, AllTopics: true}) {
		t.Error("empty rule denied metadata(all); want allow")
	}
	m, err = Compile([]policy.PortRuleKafka{{Role: "PRODUCE", Topic: "t"}})
	if err != nil {
		t.Fatal(err)
	}
	if !m.Allow(&Request{APIKey: 22}) {
		t.Error("produce role denied idempotent InitProducerId")
	}
	if m.Allow(&Request{APIKey: 22, TransactionalID: "tx"}) {
		t.Error("produce role allowed transactional InitProducerId")
	}
	if m.Allow(&Request{APIKey: 1, Topics: []string{"t"}}) {
		t.Error("produce role allowed fetch")
	}
}

func BenchmarkMatcher(b *testing.B) {
	for _, n := range []int{10, 100} {
		var rules []policy.PortRuleKafka
		for i := range n {
			rules = append(rules, policy.PortRuleKafka{Role: "produce", Topic: fmt.Sprintf("topic-%03d", i)})
		}
		m, err := Compile(rules)
		if err != nil {
			b.Fatal(err)
		}
		reqs := map[string]Request{
			"produce-1-topic":  {APIKey: 0, APIVersion: 11, ClientID: "c", Topics: []string{fmt.Sprintf("topic-%03d", n-1)}},
			"produce-3-topics": {APIKey: 0, APIVersion: 11, ClientID: "c", Topics: []string{"topic-000", "topic-001", fmt.Sprintf("topic-%03d", n-1)}},
			"denied-topic":     {APIKey: 0, APIVersion: 11, Topics: []string{"other"}},
			"topic-less":       {APIKey: 22, APIVersion: 5},
		}
		for name, req := range reqs {
			b.Run(fmt.Sprintf("%d-rules/%s", n, name), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					m.Allow(&req)
				}
			})
		}
	}
}

// TestMatcherAnd: a chained matcher (egress rules And a local
// destination's ingress rules) allows a request only when both do, and
// compares equal only to the same chain.
func TestMatcherAnd(t *testing.T) {
	egress, err := Compile([]policy.PortRuleKafka{{Role: "produce", Topic: "deathstar-plans"}, {Role: "produce", Topic: "empire-announce"}})
	if err != nil {
		t.Fatal(err)
	}
	ingress, err := Compile([]policy.PortRuleKafka{{Role: "produce", Topic: "empire-announce"}})
	if err != nil {
		t.Fatal(err)
	}
	all, _ := Compile(nil)
	both := egress.And(ingress)
	for _, c := range []struct {
		topic string
		want  bool
	}{{"empire-announce", true}, {"deathstar-plans", false}, {"other", false}} {
		req := &Request{APIKey: 0, APIVersion: 9, Topics: []string{c.topic}}
		if got := both.Allow(req); got != c.want {
			t.Errorf("produce %s: Allow = %v, want %v", c.topic, got, c.want)
		}
	}
	if !egress.Allow(&Request{APIKey: 0, APIVersion: 9, Topics: []string{"deathstar-plans"}}) {
		t.Error("And changed its receiver")
	}
	if egress.And(all) != egress || all.And(ingress) != ingress {
		t.Error("And with an allow-all matcher is not the other matcher")
	}
	if both.Equal(egress) || egress.Equal(both) || !both.Equal(egress.And(ingress)) {
		t.Error("Equal does not compare the chained part")
	}
	// all.And(x) is x; a chain on an allow-all matcher still applies x.
	if got := all.And(both).Allow(&Request{APIKey: 0, APIVersion: 9, Topics: []string{"deathstar-plans"}}); got {
		t.Error("allow-all And chain allowed what the chain denies")
	}
}

package kafka

import (
	"errors"
	"fmt"
	"strings"

	"github.com/wardproxy/ward/policy/l7"
)

// Request is what the rules see of one Kafka request.
type Request struct {
	APIKey     int16
	APIVersion int16
	ClientID   string
	// Topics are the topic names the request names (topic IDs already
	// resolved to names), in request order, possibly with repeats.
	Topics []string
	// AllTopics is set when the request asks about every topic (a Metadata
	// request with a null topic list, or an empty one at version 0). Only a
	// rule without a topic covers it.
	AllTopics bool
	// TransactionalID is the transactional id the request carries, if any.
	// The produce role allows InitProducerId only without one (idempotent
	// producers); transactions need an explicit apiKey rule.
	TransactionalID string
}

// Roles. The lists are Cilium's (cilium/proxy pkg/policy/api/kafka) plus
// what today's clients need for the same role; see the package doc.
var (
	roleProduce = []int16{
		keyProduce, keyMetadata, keyApiVersions,
		keyInitProducerID, // idempotent producers (default since Kafka 3.0 clients)
	}
	roleConsume = []int16{
		keyFetch, keyListOffsets, keyMetadata, keyOffsetCommit, keyOffsetFetch,
		keyFindCoordinator, keyJoinGroup, keyHeartbeat, keyLeaveGroup, keySyncGroup,
		keyApiVersions,
		keyOffsetForLeaderEpoch,   // KIP-320 fencing, every fetch-from-offset client
		keyConsumerGroupHeartbeat, // KIP-848 consumer group protocol (Kafka 4.x)
	}
)

// RoleKeys returns the API keys a role expands to, or nil for an unknown
// role. The role name is case-insensitive.
func RoleKeys(role string) []int16 {
	switch strings.ToLower(role) {
	case "produce":
		return append([]int16(nil), roleProduce...)
	case "consume":
		return append([]int16(nil), roleConsume...)
	}
	return nil
}

// MaxTopicLen is the longest topic a rule may name (l7.MaxTopicLen).
const MaxTopicLen = l7.MaxTopicLen

type rule struct {
	keys     *[128]bool // nil: every key
	version  int16      // -1: every version
	clientID string     // "": every client
	topic    string     // "": every topic
	noTxnKey int16      // a key this rule allows only without a transactional id, or -1
}

func (r *rule) matches(req *Request) bool {
	if r.keys != nil && (req.APIKey < 0 || int(req.APIKey) >= len(r.keys) || !r.keys[req.APIKey]) {
		return false
	}
	if r.version >= 0 && r.version != req.APIVersion {
		return false
	}
	if r.clientID != "" && r.clientID != req.ClientID {
		return false
	}
	if r.noTxnKey >= 0 && req.APIKey == r.noTxnKey && req.TransactionalID != "" {
		return false
	}
	return true
}

// Matcher is a compiled list of Kafka rules. It is immutable and safe for
// concurrent use.
type Matcher struct {
	anyTopic []*rule            // rules without a topic
	byTopic  map[string][]*rule // rules naming one topic
	n        int
	and      *Matcher // also required (And); nil: nothing more
}

// And is the matcher that allows a request only when both m and o allow
// it: an egress listener applies its client's egress rules and a local
// destination's ingress rules to the same request.
func (m *Matcher) And(o *Matcher) *Matcher {
	switch {
	case o == nil || o.n == 0 && o.and == nil || m == o:
		return m
	case m == nil || m.n == 0 && m.and == nil:
		return o
	}
	c := *m
	if c.and != nil {
		o = c.and.And(o)
	}
	c.and = o
	return &c
}

// Compile checks and compiles rules. A rule matches a request when every
// field it sets matches: role (the request's key is in the role's set) or
// apiKey, apiVersion, clientID, and topic. A request naming topics is
// allowed when each of its topics is covered by some matching rule; a
// request naming none is allowed when some rule matches its other fields.
// An empty rule matches everything; so does an empty list (no Kafka rules on
// the port means no L7 restriction, as in Cilium).
func Compile(rules []l7.KafkaRule) (*Matcher, error) {
	m := &Matcher{byTopic: map[string][]*rule{}, n: len(rules)}
	var errs []error
	for i, pr := range rules {
		r, err := compileRule(pr)
		if err != nil {
			errs = append(errs, fmt.Errorf("kafka[%d]: %w", i, err))
			continue
		}
		if r.topic == "" {
			m.anyTopic = append(m.anyTopic, r)
		} else {
			m.byTopic[r.topic] = append(m.byTopic[r.topic], r)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return m, nil
}

func compileRule(pr l7.KafkaRule) (*rule, error) {
	r := &rule{version: -1, clientID: pr.ClientID, topic: pr.Topic, noTxnKey: -1}
	if pr.Role != "" && pr.APIKey != "" {
		return nil, fmt.Errorf("role %q and apiKey %q are mutually exclusive", pr.Role, pr.APIKey)
	}
	if pr.Role != "" {
		keys := RoleKeys(pr.Role)
		if keys == nil || !l7.KafkaRole(pr.Role) {
			return nil, fmt.Errorf("role: unknown role %q (want produce or consume)", pr.Role)
		}
		r.keys = new([128]bool)
		for _, k := range keys {
			r.keys[k] = true
		}
		if strings.EqualFold(pr.Role, "produce") {
			r.noTxnKey = keyInitProducerID
		}
	}
	if pr.APIKey != "" {
		k, ok := APIKeyByName(pr.APIKey)
		if !ok {
			return nil, fmt.Errorf("apiKey: unknown Kafka API %q", pr.APIKey)
		}
		r.keys = new([128]bool)
		r.keys[k] = true
	}
	if pr.APIVersion != "" {
		v, err := l7.KafkaAPIVersion(pr.APIVersion)
		if err != nil {
			return nil, err
		}
		r.version = v
	}
	if pr.Topic != "" {
		if err := validTopic(pr.Topic); err != nil {
			return nil, fmt.Errorf("topic: %w", err)
		}
	}
	return r, nil
}

func validTopic(t string) error { return l7.KafkaTopic(t) }

// Equal reports whether m and o hold the same rules in the same order, so
// that a policy update that recompiles unchanged rules is not a change
// (a parser restarts a fetch session only when its rules changed).
func (m *Matcher) Equal(o *Matcher) bool {
	if m == o {
		return true
	}
	if m == nil || o == nil || m.n != o.n || len(m.byTopic) != len(o.byTopic) || !rulesEqual(m.anyTopic, o.anyTopic) {
		return false
	}
	if (m.and == nil) != (o.and == nil) || m.and != nil && !m.and.Equal(o.and) {
		return false
	}
	for t, rs := range m.byTopic {
		if !rulesEqual(rs, o.byTopic[t]) {
			return false
		}
	}
	return true
}

func rulesEqual(a, b []*rule) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if (x.keys == nil) != (y.keys == nil) || (x.keys != nil && *x.keys != *y.keys) {
			return false
		}
		if x.version != y.version || x.clientID != y.clientID || x.topic != y.topic || x.noTxnKey != y.noTxnKey {
			return false
		}
	}
	return true
}

// Allow reports whether the rules allow req.
func (m *Matcher) Allow(req *Request) bool {
	if m.and != nil && !m.and.Allow(req) {
		return false
	}
	if m.n == 0 {
		return true
	}
	if len(req.Topics) == 0 {
		if req.AllTopics {
			return m.anyMatch(m.anyTopic, req)
		}
		if m.anyMatch(m.anyTopic, req) {
			return true
		}
		for _, rs := range m.byTopic {
			if m.anyMatch(rs, req) {
				return true
			}
		}
		return false
	}
	if req.AllTopics && !m.anyMatch(m.anyTopic, req) {
		return false
	}
	wild := m.anyMatch(m.anyTopic, req)
	if wild {
		return true
	}
	for i, t := range req.Topics {
		if i > 0 && req.Topics[i-1] == t {
			continue
		}
		if !m.anyMatch(m.byTopic[t], req) {
			return false
		}
	}
	return true
}

func (m *Matcher) anyMatch(rs []*rule, req *Request) bool {
	for _, r := range rs {
		if r.matches(req) {
			return true
		}
	}
	return false
}

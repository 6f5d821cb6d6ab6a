package npds

import "github.com/wardproxy/ward/policy/l7"

// NewL7 is the wire form of a rule's L7 rules (l7.Encode).
func NewL7(r *l7.Rules) *L7Rules { return &L7Rules{Rules: l7.Encode(r)} }

// HTTP is the wire form of HTTP rules. Without rules it is an HTTP part
// with an empty list (which allows every request), not an empty part.
func HTTP(rules ...l7.HTTPRule) *L7Rules {
	if len(rules) == 0 {
		return &L7Rules{Rules: `{"http":[]}`}
	}
	return NewL7(&l7.Rules{HTTP: rules})
}

// Kafka is the wire form of Kafka rules; see HTTP for an empty list.
func Kafka(rules ...l7.KafkaRule) *L7Rules {
	if len(rules) == 0 {
		return &L7Rules{Rules: `{"kafka":[]}`}
	}
	return NewL7(&l7.Rules{Kafka: rules})
}

// Decode returns the rules x carries (l7.Decode).
func (x *L7Rules) Decode() (*l7.Rules, error) { return l7.Decode(x.GetRules()) }

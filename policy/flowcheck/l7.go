package flowcheck

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/wardproxy/ward/filters/dns"
	"github.com/wardproxy/ward/filters/kafka"
	"github.com/wardproxy/ward/policy"
)

// kafkaAPIKey decodes a flow's apiKey: a Kafka API name or a number.
func kafkaAPIKey(raw json.RawMessage) (int16, error) {
	if len(raw) == 0 {
		return 0, fmt.Errorf("missing")
	}
	var n int16
	if err := json.Unmarshal(raw, &n); err == nil {
		return n, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return 0, fmt.Errorf("want a name or a number, got %s", raw)
	}
	if v, err := strconv.ParseInt(s, 10, 16); err == nil {
		return int16(v), nil
	}
	k, ok := kafka.APIKeyByName(s)
	if !ok {
		return 0, fmt.Errorf("unknown Kafka API key %q", s)
	}
	return k, nil
}

func (e *evaluator) matchKafka(k *Kafka, s *policy.L7Selection) (bool, string, error) {
	m, err := cached(e, s, func() (*kafka.Matcher, error) { return kafka.Compile(s.Rules.Kafka) })
	if err != nil {
		return false, "", fmt.Errorf("kafka rules: %w", err)
	}
	key, err := kafkaAPIKey(k.APIKey)
	if err != nil {
		return false, "", err
	}
	topics := slices.Clone(k.Topics)
	slices.Sort(topics)
	req := &kafka.Request{APIKey: key, APIVersion: k.APIVersion, ClientID: k.ClientID, Topics: topics}
	what := fmt.Sprintf("kafka %s v%d topics [%s]", kafka.APIKeyName(key), k.APIVersion, strings.Join(k.Topics, ","))
	if m.Allow(req) {
		return true, what + " allowed", nil
	}
	return false, what + " matches no rule (authorization error)", nil
}

func (e *evaluator) matchDNS(d *DNS, s *policy.L7Selection) (bool, string, error) {
	m, err := cached(e, s, func() (*dns.Matcher, error) { return dns.Compile(s.Rules.DNS) })
	if err != nil {
		return false, "", fmt.Errorf("dns rules: %w", err)
	}
	if m.Allow(d.Query) {
		return true, fmt.Sprintf("dns query %q allowed", d.Query), nil
	}
	return false, fmt.Sprintf("dns query %q matches no rule (REFUSED)", d.Query), nil
}

// cached compiles a selection's rules once per evaluator.
func cached[T any](e *evaluator, s *policy.L7Selection, compile func() (T, error)) (T, error) {
	if v, ok := e.cache[s]; ok {
		if err, isErr := v.(error); isErr {
			var zero T
			return zero, err
		}
		return v.(T), nil
	}
	v, err := compile()
	if err != nil {
		e.cache[s] = err
		return v, err
	}
	e.cache[s] = v
	return v, nil
}

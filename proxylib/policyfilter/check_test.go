package policyfilter

import (
	"testing"

	httpf "github.com/wardproxy/ward/filters/http"
	"github.com/wardproxy/ward/filters/kafka"
	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/xds/npds"
)

// FuzzCheckImpliesCompile: rules that l7.Check (what validation runs)
// accepts compile in every filter — the in-Envoy compile path never
// refuses a validated policy, and no HTTP rule is silently disabled.
func FuzzCheckImpliesCompile(f *testing.F) {
	f.Add("/public/.*", "GET", "h", "X-A: b", "X-T", "v", "REPLACE", "produce", "", "3", "c", "t")
	f.Add("(", "", "", ": v", "", "", "DROP", "admin", "nosuch", "-1", "", "a/b")
	f.Add(`\Q(`, "[a-", "x{2,1}", " x", "n", "", "", "", "CREATE_TOPICS", "99999", "", "")
	f.Add("/a", "GET|HEAD", "", "X", "y", "", "LOG", "", "describecluster", "", "", "")
	f.Fuzz(func(t *testing.T, path, method, host, header, hmName, hmValue, mismatch, role, apiKey, apiVersion, clientID, topic string) {
		r := &l7.Rules{HTTP: []l7.HTTPRule{{Path: path, Method: method, Host: host, Headers: []string{header},
			HeaderMatches: []*l7.HeaderMatch{{Name: hmName, Value: hmValue, Mismatch: l7.MismatchAction(mismatch)}}}}}
		if len(l7.Check(r)) == 0 {
			if _, err := httpf.Compile(r.HTTP, nil); err != nil {
				t.Errorf("Check accepts %+v; httpf.Compile: %v", r.HTTP[0], err)
			}
			if _, err := Compile(&npds.PortNetworkPolicyRule{L7: npds.NewL7(r)}); err != nil {
				t.Errorf("Check accepts %+v; the in-Envoy compile: %v", r.HTTP[0], err)
			}
		}
		k := &l7.Rules{Kafka: []l7.KafkaRule{{Role: role, APIKey: apiKey, APIVersion: apiVersion, ClientID: clientID, Topic: topic}}}
		if len(l7.Check(k)) == 0 {
			if _, err := kafka.Compile(k.Kafka); err != nil {
				t.Errorf("Check accepts %+v; kafka.Compile: %v", k.Kafka[0], err)
			}
			if _, err := Compile(&npds.PortNetworkPolicyRule{L7: npds.NewL7(k)}); err != nil {
				t.Errorf("Check accepts %+v; the in-Envoy compile: %v", k.Kafka[0], err)
			}
		}
	})
}

package l7

import (
	"fmt"
	"strings"
)

// Problem is one bad field of a rules block. Path is relative to the block
// ("http[0].path"); Value is the offending value when there is one.
type Problem struct {
	Path  string
	Value string
	Msg   string
}

// Check reports every field of r that the filters' compilers (filters/http,
// filters/kafka, filters/dns) would reject, plus what ward cannot enforce:
// an l7proto ward has no parser for, more than one protocol on a port, and headerMatches secrets (not delivered to Envoy yet). A rules
// block without problems compiles everywhere it goes.
func Check(r *Rules) []Problem {
	if r == nil {
		return nil
	}
	var ps []Problem
	add := func(path, value, msg string) { ps = append(ps, Problem{Path: path, Value: value, Msg: msg}) }
	var kinds []string
	for _, k := range []struct {
		set  bool
		name string
	}{{r.HTTP != nil, "http"}, {r.Kafka != nil, "kafka"}, {r.DNS != nil, "dns"}, {r.L7Proto != "", "l7proto " + r.L7Proto}} {
		if k.set {
			kinds = append(kinds, k.name)
		}
	}
	if len(kinds) > 1 {
		add("", "", fmt.Sprintf("only one L7 protocol per port: found %s", strings.Join(kinds, " and ")))
	}
	switch {
	case r.L7Proto != "":
		checkGeneric(r.L7Proto, r.L7, add)
	case r.L7 != nil:
		add("l7", "", "l7 needs l7proto")
	}
	for i := range r.HTTP {
		checkHTTP(&r.HTTP[i], fmt.Sprintf("http[%d]", i), add)
	}
	for i := range r.Kafka {
		checkKafka(&r.Kafka[i], fmt.Sprintf("kafka[%d]", i), add)
	}
	for i, d := range r.DNS {
		p := fmt.Sprintf("dns[%d]", i)
		switch {
		case d.MatchName == "" && d.MatchPattern == "":
			add(p, "", "needs matchName or matchPattern")
		case d.MatchName != "" && d.MatchPattern != "":
			add(p, "", "matchName and matchPattern are mutually exclusive")
		}
	}
	return ps
}

func checkHTTP(h *HTTPRule, p string, add func(path, value, msg string)) {
	if h.Path != "" && !strings.HasPrefix(strings.TrimPrefix(h.Path, "^"), "/") {
		add(p+".path", h.Path, fmt.Sprintf("path %q must begin with /", h.Path))
	}
	for _, f := range []struct{ name, expr string }{{"path", h.Path}, {"method", h.Method}, {"host", h.Host}} {
		if f.expr == "" {
			continue
		}
		if _, _, err := Regex(f.expr); err != nil {
			msg := err.Error()
			if rest, ok := strings.CutPrefix(msg, "invalid regex "); ok {
				msg = "invalid " + f.name + " regex " + rest
			} else {
				msg = f.name + " " + msg
			}
			add(p+"."+f.name, short(f.expr), msg)
		}
	}
	for j, hd := range h.Headers {
		if _, _, _, err := ParseHeader(hd); err != nil {
			add(fmt.Sprintf("%s.headers[%d]", p, j), hd, err.Error())
		}
	}
	for j, hm := range h.HeaderMatches {
		mp := fmt.Sprintf("%s.headerMatches[%d]", p, j)
		if hm == nil {
			add(mp, "", "must be an object, got null")
			continue
		}
		if hm.Name == "" {
			add(mp+".name", "", "missing")
		}
		if !hm.Mismatch.Known() {
			add(mp+".mismatch", string(hm.Mismatch), fmt.Sprintf("unknown mismatch action %q (want LOG, ADD, DELETE or REPLACE)", hm.Mismatch))
		}
		if hm.Secret != nil && hm.Secret.Name == "" {
			add(mp+".secret.name", "", "missing")
		}
	}
}

func checkKafka(k *KafkaRule, p string, add func(path, value, msg string)) {
	if k.Role != "" && k.APIKey != "" {
		add(p, "", "role and apiKey are mutually exclusive")
	}
	if k.Role != "" && !KafkaRole(k.Role) {
		add(p+".role", k.Role, fmt.Sprintf("unknown role %q (want produce or consume)", k.Role))
	}
	if k.APIKey != "" {
		if _, ok := KafkaAPIKey(k.APIKey); !ok {
			add(p+".apiKey", k.APIKey, fmt.Sprintf("unknown Kafka apiKey %q", k.APIKey))
		}
	}
	if k.APIVersion != "" {
		if _, err := KafkaAPIVersion(k.APIVersion); err != nil {
			add(p+".apiVersion", k.APIVersion, err.Error())
		}
	}
	if k.Topic != "" {
		if err := KafkaTopic(k.Topic); err != nil {
			v := k.Topic
			if len(v) > 64 {
				v = short(v)
			}
			add(p+".topic", v, err.Error())
		}
	}
}

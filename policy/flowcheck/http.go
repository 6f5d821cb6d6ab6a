package flowcheck

import (
	"fmt"
	"strings"

	httpf "github.com/wardproxy/ward/filters/http"
	"github.com/wardproxy/ward/policy"
)

func (e *evaluator) matchHTTP(h *HTTP, s *policy.L7Selection) (bool, string, error) {
	m, err := cached(e, s, func() (*httpf.Matcher, error) {
		var secrets httpf.SecretSource
		if e.opts.Secrets != nil {
			secrets = e.opts.Secrets
		}
		return httpf.Compile(s.Rules.HTTP, secrets)
	})
	if err != nil {
		return false, "", fmt.Errorf("http rules: %w", err)
	}
	hdrs := httpf.MapHeaders{}
	for k, v := range h.Headers {
		k = strings.ToLower(k) // header names are case-insensitive
		if old, ok := hdrs[k]; ok {
			v = old + "," + v
		}
		hdrs[k] = v
	}
	req := &httpf.Request{Method: h.Method, Path: h.Path, Host: h.Host, Headers: hdrs}
	what := fmt.Sprintf("http %s %s", h.Method, h.Path)
	res := m.Match(req)
	if res.Allowed {
		return true, fmt.Sprintf("%s allowed by rule %d", what, res.Rule), nil
	}
	return false, what + " matches no rule (403 Access denied)", nil
}

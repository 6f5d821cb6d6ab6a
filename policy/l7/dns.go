package l7

import (
	"errors"
	"fmt"
	"strings"
)

// DNSName checks a DNS rule's (or a toFQDNs selector's) matchName and
// returns it in lower case (RFC 4343) without its trailing dot: at most
// 253 characters of labels of 1-63 characters of [a-zA-Z0-9_-]. It is the
// check of policy validation and of the DNS proxy's compiler alike.
func DNSName(s string) (string, error) {
	n := strings.ToLower(strings.TrimSuffix(s, "."))
	if n == "" {
		return "", errors.New("empty name")
	}
	if len(n) > 253 {
		return "", fmt.Errorf("name %q longer than 253 characters", s)
	}
	for _, l := range strings.Split(n, ".") {
		if l == "" || len(l) > 63 {
			return "", fmt.Errorf("name %q: empty label or label longer than 63 characters", s)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("name %q: character %q not allowed (use matchPattern for wildcards)", s, c)
			}
		}
	}
	return n, nil
}

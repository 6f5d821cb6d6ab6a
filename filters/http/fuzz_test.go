package http

import (
	"regexp"
	"testing"

	"github.com/wardproxy/ward/policy"
)

// FuzzMatch checks, for arbitrary rules and requests, that Compile and
// Match never panic, that the index finds exactly what a scan of every
// rule finds, and that a path rule agrees with a plainly anchored regexp.
func FuzzMatch(f *testing.F) {
	f.Add("POST", "/v1/request-landing", "", "POST", "/v1/request-landing", "deathstar")
	f.Add("^GET$", "^/troop_logs/_search/??.*$", "", "GET", "/troop_logs/_search?q=x", "es:9200")
	f.Add("GET|HEAD", "/a|/b", `api\.example\.com`, "HEAD", "/b", "api.example.com:80")
	f.Add("", `/a\Q|.*`, "", "GET", "/b", "")
	f.Add("(?i)get", "/x(/.*)?", ".*", "GET", "/x/y", "[::1]:8080")
	f.Add("", "^$", "", "GET", "", "")
	f.Add("P(UT|OST)", "/cloudcity.DoorManager/Get(Name|Location)", "", "PUT", "/cloudcity.DoorManager/GetName", "")
	f.Add("", ".*/items/[0-9]+$", "", "GET", "/a/items/12", "")
	f.Add("", "^.+a.{3}", "", "GET", "/xxa123", "")
	f.Fuzz(func(t *testing.T, method, path, host, rMethod, rPath, rHost string) {
		rules := []policy.PortRuleHTTP{
			{Method: method, Path: path, Host: host},
			{Path: path},
			{Method: method},
			{Path: "/fixed" + path},
		}
		m, _ := Compile(rules, nil)
		req := &Request{Method: rMethod, Path: rPath, Host: rHost}
		got := m.Match(req)
		if want := naiveMatch(m, req); got.Rule != want || got.Allowed != (want >= 0) {
			t.Fatalf("Match(%+v) = %+v; scan says rule %d", req, got, want)
		}
		// The same rules with an action on the first run in evaluate-all
		// mode; LOG never denies, so the first matching rule is the same.
		rules[0].HeaderMatches = []*policy.HeaderMatch{{Name: "x-log", Value: "v", Mismatch: policy.MismatchLog}}
		ma, _ := Compile(rules, nil)
		if got := ma.Match(req); got.Rule != naiveMatch(ma, req) {
			t.Fatalf("evaluate-all Match(%+v) = %+v; scan says rule %d", req, got, naiveMatch(ma, req))
		}
		if path == "" || rPath == "" {
			return
		}
		re, err := regexp.Compile(`^(?:` + path + `)$`)
		if err != nil || m.rules[1].broken {
			return
		}
		if want := re.MatchString(rPath); m.rules[1].path.match(rPath) != want {
			t.Fatalf("path %q on %q = %v; regexp says %v", path, rPath, !want, want)
		}
	})
}

// FuzzCompile feeds arbitrary headers and header matches to Compile.
func FuzzCompile(f *testing.F) {
	f.Add("X-My-Header: true", "x-token", "v", "REPLACE", "x-token", "w")
	f.Add(":", "", "", "", "", "")
	f.Add("a b c", "A", "", "DELETE", "a", "")
	f.Fuzz(func(t *testing.T, header, hmName, hmValue, action, reqName, reqValue string) {
		rules := []policy.PortRuleHTTP{{
			Headers:       []string{header},
			HeaderMatches: []*policy.HeaderMatch{{Name: hmName, Value: hmValue, Mismatch: policy.MismatchAction(action)}},
		}}
		m, _ := Compile(rules, secrets{"ns/s": hmValue})
		res := m.Match(&Request{Method: "GET", Path: "/", Headers: MapHeaders{reqName: reqValue}})
		if !res.Allowed && (len(res.Edits) > 0 || len(res.Notes) > 0) {
			t.Fatalf("denied request carries edits %v notes %v", res.Edits, res.Notes)
		}
	})
}

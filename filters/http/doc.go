// Package http enforces the HTTP rules of CiliumNetworkPolicy
// (toPorts[].rules.http) on HTTP/1.1, HTTP/2 and gRPC requests. It is pure
// Go: the Envoy binding (proxylib) hands it a request's headers and applies
// the decision it returns.
//
// Semantics (Cilium's, through Envoy; see DESIGN.md and
// research/cilium-anchor.md):
//   - path, method and host are RE2 regular expressions (Go regexp, Perl
//     syntax, as Cilium validates them) matched against the whole value:
//     each is compiled as ^(?:expr)$, like Envoy's RE2::FullMatch;
//   - path is the request's :path, query string included;
//   - host is matched against :authority. ward also accepts the authority
//     without its port (":8080" stripped) when the full value does not match:
//     clients put the port there for non-default ports, the port never picks
//     the destination (the original destination does), and a rule naming the
//     port still matches the full value. Cilium matches the full value only;
//   - headers: "Name" requires the header to be present, "Name: value"
//     (split at the first space, trailing ':' trimmed from the name) to equal
//     value exactly;
//   - headerMatches: a secret's value wins over value (value is the fallback
//     when the secret is missing; neither → the rule never matches); the
//     comparison is constant-time; an empty value is a presence match; on a
//     mismatch the action runs: "" denies (the rule does not match), LOG
//     notes it, ADD adds the header, DELETE removes the wrong header,
//     REPLACE sets the expected value;
//   - a header's value is all its values joined with "," (Envoy's
//     getAllOfHeaderAsString);
//   - all fields of a rule must match; a request is allowed when any rule
//     matches; an empty rule list or an empty rule allows everything; when
//     any rule has headerMatches with an action, every rule is evaluated so
//     all actions run (as Cilium does), and the edits of every matching rule
//     are returned in rule order. Every condition sees the request as it
//     arrived: unlike Cilium's in-place edits, one rule's REPLACE cannot
//     satisfy a later rule's condition;
//   - a rule that does not compile (bad or over-long regex) never matches
//     and is reported by Compile, but the other rules keep working
//     (cilium#41314: one long regex must not fail an endpoint's policy).
//
// Matching cost does not grow with the number of rules: Compile builds one
// deterministic automaton per field (path, method, host) over all rules'
// expressions (subset construction over their RE2 programs, ASCII classes,
// bounded in states and work); Match runs each request value through it
// once and fully checks only the rules the most selective field allows.
// Expressions the automata cannot take (\b, (?m), exponential ones such as
// .*a.{30}) and non-ASCII values fall back to the regexes, with literal
// prefix and required-substring prefilters.
//
// Invariants: a Matcher is immutable after Compile and safe for concurrent
// use; Match never compiles a regex and does not allocate for requests
// whose rules have no header actions; nothing here panics on input; every
// path that cannot decide denies (fail closed).
package http

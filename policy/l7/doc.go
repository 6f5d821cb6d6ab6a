// Package l7 is ward's layer-7 rule vocabulary: the rule types of a
// toPorts[].rules block (HTTP, Kafka, DNS), the protocol kind of a proxied
// port, the names and limits those rules obey (Kafka API names, regex and
// topic lengths), the one check of a rule list, the wire encoding of rules
// between wardd and the filters inside Envoy, and the one definition of
// which rules of a port apply to a remote identity.
//
// Why one small shared package (as Cilium splits pkg/policy/api from
// pkg/policy) rather than filters compiling from the NPDS wire type: the
// policy engine, the xDS translation, the filters inside Envoy, the DNS
// proxy and `ward policy test` must agree on every field and every limit,
// and they did not while each held its own copy. Package policy needs the
// types with Cilium's JSON names to parse policies; the filters need them
// without linking the policy engine into libward.so (this package imports
// only the standard library), and kafka.Compile keeps its signature.
//
// Rules cross the process boundary in their own JSON encoding
// (Encode/Decode, carried as one string in the NPDS resource) instead of
// per-protocol proto messages copied field by field: adding a field here
// carries it to the filters with no copy code to forget, and Decode
// refuses fields it does not know, so a filter older than its agent NACKs
// the update (the previous policy stays in force) instead of silently
// ignoring a constraint. Check is what validation runs and exactly what
// the filters' compilers would reject, so a validated policy never fails
// to compile inside Envoy. Select is the one definition of which rules
// apply, used by the policy model (ward policy test, the DNS proxy glue)
// and by the in-Envoy policy client alike.
//
// Invariants: values of these types are plain data; nothing here keeps
// state; nothing panics on input.
package l7

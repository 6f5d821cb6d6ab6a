// Package dns is ward's DNS proxy: it enforces the DNS rules of
// CiliumNetworkPolicy (toPorts[].rules.dns), learns names → IPs from the
// answers it lets through into a per-endpoint FQDN cache, and feeds the IPs
// selected by toFQDNs into the ipcache before the client sees the answer.
//
// Invariants:
//   - a query is forwarded only when the sending endpoint's rules for the
//     original destination port allow its name; otherwise it is answered
//     REFUSED (or NXDOMAIN by option), from the original destination;
//   - an allowed answer is released to the client only after the ipcache
//     and policy updates for its IPs completed, or the bounded wait
//     (Config.UpdateTimeout) expired, which is counted;
//   - an answer that does not parse, does not match its question or comes
//     from another address than the one the query went to is never cached
//     and never forwarded to the client as is (SERVFAIL instead);
//   - nothing here panics on input.
package dns

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
//   - the FQDN cache is bounded (IPs per name, names per endpoint and per
//     node, TTLs between Config.MinTTL and Config.MaxTTL, zombies), and so
//     is the state file; evictions turn IPs into zombies, kept while a
//     connection uses them, and are counted; an answer released to the
//     client carries no TTL above Config.MaxTTL;
//   - the proxy writes the ipcache only through its IPCache, which in
//     wardd is the FQDN owner of agent/ipcache: it never changes an entry
//     an endpoint or a CIDR rule owns;
//   - nothing here panics on input.
package dns

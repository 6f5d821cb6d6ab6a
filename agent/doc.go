// Package agent is ward's node agent as a library: what `wardd` runs, and
// what the demo, the end-to-end suites and the benchmarks build a node
// with.
//
// Data flows one way:
//
//	sources                    repository            consumers of each State, in order
//	policy directory  ──┐                       ┌──> policyResources (NPDS + identity table over xDS, ACKed)
//	  (dirsource)       ├──> policy.Repository ─┼──> datapath (BPF ipcache, policy maps, endpoints)
//	endpoints (Config) ─┘     (resolution)      └──> DNS proxy selectors (after the publish lock)
//	DNS proxy answers ──> FQDN identities ──> publish (before the answer is released)
//
// Construction and lifetime:
//
//	a, err := agent.New(cfg, log) // validates; acquires nothing
//	err = a.Run(ctx)              // xDS socket, BPF, DNS proxy, Envoy; returns when all stopped
//
// Invariants:
//   - Run owns every goroutine the agent starts (one errgroup) and returns
//     only after they exited; New starts none.
//   - One publish at a time: a State (resolved snapshot + workloads) is
//     handed to the consumers synchronously, the proxy's resources first
//     (applied by Envoy, at most defaultProxyAckWait), then the datapath, so
//     a proxy knows a policy and the endpoints' addresses before traffic is
//     redirected to it for them. Envoy's listeners for new endpoints are
//     sent before the publish (endpointsChanged).
//   - A consumer error is reported in Status per endpoint; the consumer
//     leaves the affected endpoint fail-closed, never stale or skipped.
//   - With no policy directory, the agent serves the wire-form policies of
//     the configuration (or what a harness publishes through XDS()).
package agent

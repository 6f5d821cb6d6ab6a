// Package kafka enforces CiliumNetworkPolicy Kafka rules (toPorts[].rules.kafka)
// on the Kafka wire protocol: a codec that reads the request header and every
// topic a request names for every API key and version an Apache Kafka 4.x
// broker speaks, the rule matcher (roles, apiKey, apiVersion, clientID,
// topic), broker-like deny responses, and the proxylib stream parser that
// ties them together.
//
// # Roles
//
// A role expands to a set of API keys. Cilium's sets
// (cilium/proxy pkg/policy/api/kafka) break today's clients, so ward adds
// exactly what current clients need for the same role, and nothing that
// widens it (no admin, delete, ACL or transaction keys):
//
//	produce: Produce(0) Metadata(3) ApiVersions(18)        (Cilium)
//	         + InitProducerId(22), only without a transactional id
//	           (idempotent producers, the default since Kafka 3.0 clients)
//	consume: Fetch(1) ListOffsets(2) Metadata(3) OffsetCommit(8)
//	         OffsetFetch(9) FindCoordinator(10) JoinGroup(11) Heartbeat(12)
//	         LeaveGroup(13) SyncGroup(14) ApiVersions(18)   (Cilium)
//	         + OffsetForLeaderEpoch(23) (KIP-320 log truncation checks)
//	         + ConsumerGroupHeartbeat(68) (KIP-848 consumer protocol)
//
// # Invariants
//
// The codec never allocates from a length the peer sent without bounding it
// by the bytes actually present and by MaxFrameSize. A request the codec
// cannot read (unknown key or version, malformed) closes the connection; a
// request the rules do not allow never reaches the broker.
package kafka

// Package kafka enforces CiliumNetworkPolicy Kafka rules (toPorts[].rules.kafka)
// on the Kafka wire protocol: a codec that reads the request header and every
// topic a request names, for every API key and version an Apache Kafka 4.x
// broker speaks; the rule matcher (roles, apiKey, apiVersion, clientID,
// topic); broker-like deny responses; and the proxylib stream parser that
// ties them together (NewParserFactory).
//
// # Codec
//
// The codec holds no hand-written per-API layout: schema_gen.go is generated
// (go generate; internal/schemagen) from the message schemas inside the
// pinned kafka-clients jar (common/message/*.json, Kafka 4.3.1), and one
// walker reads any request at any version: header v1/v2, flexible versions
// (compact strings and arrays, unsigned varints, tagged fields), nullable
// fields. Topics are the fields the schemas mark entityType topicName, and
// TopicId UUIDs (Fetch v13+, Produce v13+, OffsetCommit/OffsetFetch v10+,
// DeleteTopics v6+) resolved through the ID→name pairs learnt from the
// Metadata, CreateTopics and DescribeTopicPartitions responses on
// connections to the same broker. Record batches are never decoded. The
// topics a Fetch removes from its fetch session (ForgottenTopicsData,
// KIP-227) are not counted: they read nothing, and brokers do not authorize
// them either. Topic config resources (DescribeConfigs, AlterConfigs,
// IncrementalAlterConfigs) are topics too; an ACL binding or filter on
// topics (CreateAcls, DescribeAcls, DeleteAcls) and a regex subscription
// count as naming every topic.
//
// # Rules
//
// A rule matches a request when each field it sets matches. A request that
// names topics is allowed when every topic is covered by some matching
// rule (several rules may cover one request); a request naming none matches
// on the other fields. A request about every topic (Metadata with a null
// list, OffsetFetch of a whole group) or a KIP-848 regex subscription is
// only covered by a rule without a topic. An ID the filter cannot name is
// denied. An empty rule matches everything, and so does an empty list.
//
// # Roles
//
// A role expands to a set of API keys. Cilium's sets
// (cilium/proxy pkg/policy/api/kafka) break today's clients, so ward adds
// exactly what current clients need for the same role, and nothing that
// widens it (no admin, delete, ACL, config or transaction keys):
//
//	produce: Produce(0) Metadata(3) ApiVersions(18)            (Cilium's set)
//	         + InitProducerId(22), only without a transactional id
//	consume: Fetch(1) ListOffsets(2) Metadata(3) OffsetCommit(8)
//	         OffsetFetch(9) FindCoordinator(10) JoinGroup(11) Heartbeat(12)
//	         LeaveGroup(13) SyncGroup(14) ApiVersions(18)        (Cilium's set)
//	         + OffsetForLeaderEpoch(23)
//	         + ConsumerGroupHeartbeat(68)
//
// Why, as conformance/kafka shows against a Kafka 4.3.1 broker: the console
// producer is idempotent by default (Kafka 3.0+ clients, KIP-679) and fails
// with ClusterAuthorizationException without InitProducerId; the console
// consumer with group.protocol=consumer (the KIP-848 protocol, GA in Kafka
// 4.0) fails without ConsumerGroupHeartbeat. OffsetForLeaderEpoch is what
// consumers send to validate their position after a leader change (KIP-320);
// a single-node broker never changes leader, so the tests do not exercise
// it. Transactions (AddPartitionsToTxn, EndTxn, TxnOffsetCommit, ...),
// ConsumerGroupDescribe, telemetry and every admin key need apiKey rules.
// kcat (librdkafka) and the classic console consumer need only Cilium's keys.
//
// # Deny
//
// A denied request never reaches the broker. It is answered as a broker's
// authorizer would: the response of its API key and version with its
// correlation id, TOPIC_AUTHORIZATION_FAILED (29) on every topic and
// partition it names, else GROUP_ (30), TRANSACTIONAL_ID_ (53) or
// CLUSTER_AUTHORIZATION_FAILED (31) at the top, in request order behind the
// responses still due from the broker. The bytes are the broker's own:
// conformance/kafka TestDenyResponsesMatchBroker sends the same requests
// to a Kafka 4.3 broker whose StandardAuthorizer refuses them and compares
// every byte, for Produce, Fetch, ListOffsets, Metadata, OffsetCommit,
// OffsetFetch, FindCoordinator, JoinGroup, Heartbeat, SyncGroup,
// LeaveGroup, DescribeGroups, DeleteGroups, DescribeConfigs, AlterConfigs,
// IncrementalAlterConfigs, DeleteRecords, DescribeProducers,
// DescribeTopicPartitions, AddOffsetsToTxn, EndTxn, TxnOffsetCommit,
// DescribeTransactions, ConsumerGroupHeartbeat, ConsumerGroupDescribe and
// InitProducerId at every version both speak (216 answers), with one and
// with two topics of two partitions (an
// empty, not null, record set; -1 for the offsets, node, port and epoch of
// a refused entry; the schema's default messages). One difference is
// left: ward answers a Produce's partitions in request order, the broker
// in its HashMap's order; clients match them by topic and partition. A denied Metadata request is answered
// with the broker's own broker list (the parser sends the broker the
// request without topics and splices the denied topics into its answer):
// clients ignore a metadata response without brokers and would retry it
// forever. A denied acks=0 Produce closes the connection once earlier
// responses are delivered, as a broker does.
//
// # Policy updates
//
// The rules are looked up for every request, so a policy update applies to
// open connections from their next request on. A connection that has used
// Fetch v7+ may hold a fetch session (KIP-227), which keeps serving the
// partitions it holds without naming them again; such a connection is
// closed at its first request under rules whose content changed (an update
// elsewhere that recompiles the same rules leaves it alone: Matcher.Equal),
// and the client's next full fetch is checked against them.
//
// # Memory
//
// A request is held whole until it is decided, so its size is bounded:
// Factory.MaxFrame, by default DefaultMaxFrame (4 MiB, four times a
// default client's max.request.size); a larger request closes the
// connection, as a broker does past its socket.request.max.bytes. A
// Produce over 64 KiB that names one topic (what a producer sends a
// partition leader for one topic) is decided from its first 64 KiB and,
// allowed, streamed through as it arrives: its record batches are never
// held, up to the broker's own 100 MiB bound. The
// Stream hands the parser a frame it waited for as one slice (no second
// copy), gives large buffers back once the frame is through, and charges
// what it holds to a per-process budget (proxylib.Budget, ward.kafka's
// memory_budget, 128 MiB by default) that closes the connections going
// over it. Responses are streamed through, whatever their size, except
// the few the parser reads (Metadata, CreateTopics,
// DescribeTopicPartitions for topic IDs; a denied Metadata's probe),
// which are read only up to the max frame.
//
// # Invariants
//
// The codec never allocates from a length the peer sent without bounding it
// by the bytes actually present and by the max frame. A request the codec
// cannot read (unknown key or version, malformed, SASL v0 raw tokens) ends
// the connection with a flow record, after the answers to the requests
// before it (as a broker answers what it read, then closes). A connection
// no policy covers any more, a fetch session whose rules changed, and a
// response the parser cannot match to a request close the connection at
// once, answers in flight included. A half-close (the client's or
// the broker's end of stream) is passed on, so a closed client never leaves
// its broker connection open.
package kafka

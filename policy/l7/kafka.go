package l7

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// MaxTopicLen is the longest topic a Kafka rule may name. Kafka's own limit
// is 249; Cilium enforces 255, and so does ward so that Cilium policies load.
const MaxTopicLen = 255

// Kafka roles (case-insensitive in rules).
const (
	RoleProduce = "produce"
	RoleConsume = "consume"
)

// apiNames maps every Kafka API key to its name as Kafka's message schemas
// spell it (clients/src/main/resources/common/message/<Name>Request.json,
// Kafka 4.3). Cilium knows keys 0-33 by their lower-case names; every one
// of those is here under the same name once case, '_' and '-' are folded.
var apiNames = map[int16]string{
	0:  "Produce",
	1:  "Fetch",
	2:  "ListOffsets",
	3:  "Metadata",
	4:  "LeaderAndIsr",
	5:  "StopReplica",
	6:  "UpdateMetadata",
	7:  "ControlledShutdown",
	8:  "OffsetCommit",
	9:  "OffsetFetch",
	10: "FindCoordinator",
	11: "JoinGroup",
	12: "Heartbeat",
	13: "LeaveGroup",
	14: "SyncGroup",
	15: "DescribeGroups",
	16: "ListGroups",
	17: "SaslHandshake",
	18: "ApiVersions",
	19: "CreateTopics",
	20: "DeleteTopics",
	21: "DeleteRecords",
	22: "InitProducerId",
	23: "OffsetForLeaderEpoch",
	24: "AddPartitionsToTxn",
	25: "AddOffsetsToTxn",
	26: "EndTxn",
	27: "WriteTxnMarkers",
	28: "TxnOffsetCommit",
	29: "DescribeAcls",
	30: "CreateAcls",
	31: "DeleteAcls",
	32: "DescribeConfigs",
	33: "AlterConfigs",
	34: "AlterReplicaLogDirs",
	35: "DescribeLogDirs",
	36: "SaslAuthenticate",
	37: "CreatePartitions",
	38: "CreateDelegationToken",
	39: "RenewDelegationToken",
	40: "ExpireDelegationToken",
	41: "DescribeDelegationToken",
	42: "DeleteGroups",
	43: "ElectLeaders",
	44: "IncrementalAlterConfigs",
	45: "AlterPartitionReassignments",
	46: "ListPartitionReassignments",
	47: "OffsetDelete",
	48: "DescribeClientQuotas",
	49: "AlterClientQuotas",
	50: "DescribeUserScramCredentials",
	51: "AlterUserScramCredentials",
	52: "Vote",
	53: "BeginQuorumEpoch",
	54: "EndQuorumEpoch",
	55: "DescribeQuorum",
	56: "AlterPartition",
	57: "UpdateFeatures",
	58: "Envelope",
	59: "FetchSnapshot",
	60: "DescribeCluster",
	61: "DescribeProducers",
	62: "BrokerRegistration",
	63: "BrokerHeartbeat",
	64: "UnregisterBroker",
	65: "DescribeTransactions",
	66: "ListTransactions",
	67: "AllocateProducerIds",
	68: "ConsumerGroupHeartbeat",
	69: "ConsumerGroupDescribe",
	70: "ControllerRegistration",
	71: "GetTelemetrySubscriptions",
	72: "PushTelemetry",
	73: "AssignReplicasToDirs",
	74: "ListConfigResources",
	75: "DescribeTopicPartitions",
	76: "ShareGroupHeartbeat",
	77: "ShareGroupDescribe",
	78: "ShareFetch",
	79: "ShareAcknowledge",
	80: "AddRaftVoter",
	81: "RemoveRaftVoter",
	82: "UpdateRaftVoter",
	83: "InitializeShareGroupState",
	84: "ReadShareGroupState",
	85: "WriteShareGroupState",
	86: "DeleteShareGroupState",
	87: "ReadShareGroupStateSummary",
	88: "StreamsGroupHeartbeat",
	89: "StreamsGroupDescribe",
	90: "DescribeShareGroupOffsets",
	91: "AlterShareGroupOffsets",
	92: "DeleteShareGroupOffsets",
}

// apiAliases are extra names KafkaAPIKey accepts: Cilium's names that
// differ from Kafka's ("offsets"), the singular forms the Cilium
// documentation uses in its examples ("createtopic", "deletetopic") and
// the pre-KIP-98 name of FindCoordinator.
var apiAliases = map[string]int16{
	"offsets":          2,
	"groupcoordinator": 10,
	"createtopic":      19,
	"deletetopic":      20,
}

// foldName folds case and drops '_', '-' and ' ' so that Kafka's schema
// names (CreateTopics), its Java enum names (CREATE_TOPICS) and Cilium's
// lower-case names (createtopics) all compare equal.
func foldName(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_' || c == '-' || c == ' ':
			continue
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		}
		b.WriteByte(c)
	}
	return b.String()
}

var apiByName = func() map[string]int16 {
	m := make(map[string]int16, len(apiNames)+len(apiAliases))
	for k, n := range apiNames {
		m[foldName(n)] = k
	}
	for n, k := range apiAliases {
		m[n] = k
	}
	return m
}()

// KafkaAPIKey returns the API key a rule's apiKey names. Names are Kafka's
// (Produce, ListOffsets, CreateTopics, ...), matched case-insensitively and
// ignoring '_', '-' and ' ' (so CREATE_TOPICS works too); Cilium's names
// ("offsets" for ListOffsets) and the aliases above are accepted as well.
func KafkaAPIKey(name string) (int16, bool) {
	k, ok := apiByName[foldName(name)]
	return k, ok
}

// KafkaAPIName returns Kafka's name for key, or "" when the key is unknown.
func KafkaAPIName(key int16) string { return apiNames[key] }

// KafkaAPINames returns every name KafkaAPIKey accepts in folded form,
// sorted (for did-you-mean hints).
func KafkaAPINames() []string {
	out := make([]string, 0, len(apiByName))
	for n := range apiByName {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// KafkaAPIVersion parses a rule's apiVersion: a decimal integer 0-32767.
func KafkaAPIVersion(s string) (int16, error) {
	v, err := strconv.ParseInt(s, 10, 16)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("apiVersion %q must be a non-negative integer (0..32767)", s)
	}
	return int16(v), nil
}

// KafkaRole reports whether role names a known role (case-insensitive).
func KafkaRole(role string) bool {
	return strings.EqualFold(role, RoleProduce) || strings.EqualFold(role, RoleConsume)
}

// KafkaTopic checks a rule's topic: at most MaxTopicLen characters of
// [a-zA-Z0-9._-].
func KafkaTopic(t string) error {
	if len(t) > MaxTopicLen {
		return fmt.Errorf("topic is %d characters long, the maximum is %d", len(t), MaxTopicLen)
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("topic %q has invalid character %q (allowed: a-z A-Z 0-9 . _ -)", t, c)
		}
	}
	return nil
}

package kafka

import "strings"

// apiNames maps every Kafka API key to its name as Kafka's message schemas
// spell it (clients/src/main/resources/common/message/<Name>Request.json,
// Kafka 4.3).
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

// Well-known API keys.
const (
	keyProduce                int16 = 0
	keyFetch                  int16 = 1
	keyListOffsets            int16 = 2
	keyMetadata               int16 = 3
	keyOffsetCommit           int16 = 8
	keyOffsetFetch            int16 = 9
	keyFindCoordinator        int16 = 10
	keyJoinGroup              int16 = 11
	keyHeartbeat              int16 = 12
	keyLeaveGroup             int16 = 13
	keySyncGroup              int16 = 14
	keyApiVersions            int16 = 18
	keyInitProducerID         int16 = 22
	keyOffsetForLeaderEpoch   int16 = 23
	keyConsumerGroupHeartbeat int16 = 68
	keyGetTelemetrySubs       int16 = 71
	keyPushTelemetry          int16 = 72
)

// apiAliases are extra names accepted by APIKeyByName: Cilium's names that
// differ from Kafka's, and the singular forms the Cilium documentation uses
// in its examples ("createtopic", "deletetopic").
var apiAliases = map[string]int16{
	"offsets":     2,
	"createtopic": 19,
	"deletetopic": 20,
}

// normalizeName folds case and drops '_', '-' and ' ' so that Kafka's schema
// names (CreateTopics), its Java enum names (CREATE_TOPICS) and Cilium's
// lower-case names (createtopics) all compare equal.
func normalizeName(s string) string {
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
		m[normalizeName(n)] = k
	}
	for n, k := range apiAliases {
		m[n] = k
	}
	return m
}()

// APIKeyByName returns the API key a rule's apiKey names. Names are Kafka's
// (Produce, ListOffsets, CreateTopics, ...), matched case-insensitively and
// ignoring '_' and '-' (so CREATE_TOPICS works too); Cilium's names
// ("offsets" for ListOffsets) and the singular "createtopic"/"deletetopic"
// of Cilium's documentation are accepted as well.
func APIKeyByName(name string) (int16, bool) {
	k, ok := apiByName[normalizeName(name)]
	return k, ok
}

// APIKeyName returns Kafka's name for key, or "" when the key is unknown.
func APIKeyName(key int16) string { return apiNames[key] }

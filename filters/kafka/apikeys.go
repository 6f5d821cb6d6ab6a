package kafka

import "github.com/wardproxy/ward/policy/l7"

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

// APIKeyByName returns the API key a rule's apiKey names: l7.KafkaAPIKey,
// the one table policy validation uses too.
func APIKeyByName(name string) (int16, bool) { return l7.KafkaAPIKey(name) }

// APIKeyName returns Kafka's name for key, or "" when the key is unknown.
func APIKeyName(key int16) string { return l7.KafkaAPIName(key) }

package kafka

//go:generate go run ./internal/schemagen -jar ../../third_party/kafka-libs/kafka-clients-4.3.1.jar -o schema_gen.go

// The schema tables (schema_gen.go) describe every request and response of
// the Kafka protocol as Kafka's own message schemas do: fields with the
// versions they exist in, nullable and tagged versions, and entity types.
// The codec walks them; it holds no hand-written per-API layouts.

type ftype uint8

const (
	tBool ftype = iota + 1
	tInt8
	tInt16
	tUint16
	tInt32
	tUint32
	tInt64
	tFloat64
	tUUID
	tString
	tBytes
	tRecords
	tStruct
	tArray
)

// fixedSize is the wire size of a fixed-width type, or 0.
func (t ftype) fixedSize() int {
	switch t {
	case tBool, tInt8:
		return 1
	case tInt16, tUint16:
		return 2
	case tInt32, tUint32:
		return 4
	case tInt64, tFloat64:
		return 8
	case tUUID:
		return 16
	}
	return 0
}

// vrange is an inclusive range of versions; lo > hi is empty.
type vrange struct{ lo, hi int16 }

func (r vrange) has(v int16) bool { return r.lo <= v && v <= r.hi }

type entity uint8

const (
	eTopic entity = iota + 1
	eGroup
	eTxn
)

// Field flags: the field names the codec acts on (see schemagen flagsFor).
const (
	flAcks           uint16 = 1 << iota // Produce's Acks
	flPartition                         // a partition index
	flTopicID                           // a topic UUID
	flTopicIDs                          // a list of topic UUIDs
	flPartitionList                     // a list of partition indexes
	flResourceType                      // a config or ACL resource type
	flResourceName                      // a config or ACL resource name
	flRegex                             // a topic regex (KIP-848, KIP-1071)
	flForgotten                         // Fetch's ForgottenTopicsData
	flCoordinatorKey                    // FindCoordinator keys
	flTopics                            // named Topics
)

type field struct {
	name  string
	typ   ftype
	elem  ftype  // element type of an array
	flags uint16 // fl* bits
	// topicVers and groupVers are the versions in which this struct (or
	// array element) holds a topic (name or ID) or a group id.
	topicVers vrange
	groupVers vrange
	ver       vrange
	null      vrange
	tagged    vrange
	tag       int32
	entity    entity
	def       int64 // numeric default
	defNull   bool  // default is null
	fields    []field
}

type message struct {
	name   string
	key    int16
	valid  vrange
	flex   vrange
	fields []field
}

func requestSchema(key, version int16) *message {
	if key < 0 || int(key) >= len(requestSchemas) {
		return nil
	}
	m := requestSchemas[key]
	if m == nil || !m.valid.has(version) {
		return nil
	}
	return m
}

func responseSchema(key int16) *message {
	if key < 0 || int(key) >= len(responseSchemas) {
		return nil
	}
	return responseSchemas[key]
}

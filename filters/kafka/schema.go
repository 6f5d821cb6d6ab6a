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

type field struct {
	name    string
	typ     ftype
	elem    ftype // element type of an array
	ver     vrange
	null    vrange
	tagged  vrange
	tag     int32
	entity  entity
	def     int64 // numeric default
	defNull bool  // default is null
	fields  []field
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

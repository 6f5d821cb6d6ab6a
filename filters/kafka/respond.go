package kafka

import (
	"encoding/binary"
	"fmt"
)

// API keys whose deny responses have broker-specific fields (the
// well-known keys are in apikeys.go).
const (
	keyDeleteRecords           int16 = 21
	keyDescribeConfigs         int16 = 32
	keyAlterConfigs            int16 = 33
	keyIncrementalAlterConfigs int16 = 44
	keyDescribeProducers       int16 = 61
)

// Kafka error codes used by deny responses (org.apache.kafka.common.protocol.Errors).
const (
	errTopicAuthorization         int16 = 29 // TOPIC_AUTHORIZATION_FAILED
	errGroupAuthorization         int16 = 30 // GROUP_AUTHORIZATION_FAILED
	errClusterAuthorization       int16 = 31 // CLUSTER_AUTHORIZATION_FAILED
	errTransactionalAuthorization int16 = 53 // TRANSACTIONAL_ID_AUTHORIZATION_FAILED
)

// denyCode is the error a broker's authorizer returns for a request it
// refuses, at the level the request is refused: topics get
// TOPIC_AUTHORIZATION_FAILED per topic (and partition); a request without
// topics gets the error of the resource it names (transactional id, group,
// else the cluster).
func (d *decoded) denyCode() int16 {
	switch {
	case d.txnSeen:
		return errTransactionalAuthorization
	case d.groupSeen:
		return errGroupAuthorization
	case len(d.entries) > 0 || d.AllTopics:
		return errTopicAuthorization
	}
	return errClusterAuthorization
}

// errorMessage is the default message of an authorization error
// (org.apache.kafka.common.protocol.Errors), as brokers send it where a
// response carries one.
func errorMessage(code int16) string {
	switch code {
	case errTopicAuthorization:
		return "Topic authorization failed."
	case errGroupAuthorization:
		return "Group authorization failed."
	case errClusterAuthorization:
		return "Cluster authorization failed."
	case errTransactionalAuthorization:
		return "Transactional Id authorization failed."
	}
	return ""
}

// writer appends a Kafka message.
type writer struct{ b []byte }

func (w *writer) int8(v int8)   { w.b = append(w.b, byte(v)) }
func (w *writer) int16(v int16) { w.b = binary.BigEndian.AppendUint16(w.b, uint16(v)) }
func (w *writer) int32(v int32) { w.b = binary.BigEndian.AppendUint32(w.b, uint32(v)) }
func (w *writer) uvarint(v uint32) {
	for v >= 0x80 {
		w.b = append(w.b, byte(v)|0x80)
		v >>= 7
	}
	w.b = append(w.b, byte(v))
}

// length writes a length (-1 = null) in the encoding of the version.
func (w *writer) length(flex, short bool, n int) {
	switch {
	case flex:
		w.uvarint(uint32(n + 1))
	case short:
		w.int16(int16(n))
	default:
		w.int32(int32(n))
	}
}

func (w *writer) fixed(t ftype, v int64) {
	switch t.fixedSize() {
	case 1:
		w.b = append(w.b, byte(v))
	case 2:
		w.b = binary.BigEndian.AppendUint16(w.b, uint16(v))
	case 4:
		w.b = binary.BigEndian.AppendUint32(w.b, uint32(v))
	case 8:
		w.b = binary.BigEndian.AppendUint64(w.b, uint64(v))
	case 16:
		w.b = append(w.b, make([]byte, 16)...)
	}
}

// level is where in the response the encoder is: which request group,
// topic entry or partition the current struct mirrors.
type level struct {
	kind  int // lvTop, lvGroup, lvTopic, lvPartition, lvOther
	group int
	entry int
	part  int32
}

const (
	lvTop = iota
	lvGroup
	lvTopic
	lvPartition
	lvOther
)

// responder builds deny responses for one decoded request.
type responder struct {
	d      *decoded
	v      int16
	flex   bool
	code   int16
	mirror bool // the response carries the request's topics
	w      writer
}

// denyResponse builds the response a broker's authorizer would send for d,
// at d's version and with its correlation id, size prefix included: every
// topic (and partition) the request names answered with
// TOPIC_AUTHORIZATION_FAILED, or the request's top-level error set to the
// authorization error of its resource. All other fields hold their schema
// defaults, arrays are empty.
func denyResponse(d *decoded, buf []byte) ([]byte, error) {
	m := responseSchema(d.APIKey)
	if m == nil || !m.valid.has(d.APIVersion) || d.opaque {
		return nil, fmt.Errorf("%w: no response schema for api key %d version %d", ErrUnsupported, d.APIKey, d.APIVersion)
	}
	r := responder{d: d, v: d.APIVersion, flex: m.flex.has(d.APIVersion), code: d.denyCode()}
	r.mirror = len(d.entries) > 0 && (mirrorsTopics(m.fields, r.v, true) || d.APIKey == 32 || d.APIKey == 33 || d.APIKey == 44)
	r.w.b = append(buf[:0], 0, 0, 0, 0)
	r.w.int32(d.Correlation)
	if r.flex && d.APIKey != keyApiVersions { // ApiVersions responses keep header v0 (KIP-511)
		r.w.uvarint(0)
	}
	r.fields(m.fields, level{kind: lvTop, group: -1, entry: -1})
	binary.BigEndian.PutUint32(r.w.b, uint32(len(r.w.b)-4))
	return r.w.b, nil
}

// mirrorsTopics reports whether the response has a topic array at the top
// level or inside a top-level group array.
func mirrorsTopics(fs []field, v int16, top bool) bool {
	for i := range fs {
		f := &fs[i]
		if !f.ver.has(v) || f.typ != tArray || f.elem != tStruct {
			continue
		}
		if hasTopic(f.fields, v) {
			return true
		}
		if top && isGroupElem(f.fields, v) && mirrorsTopics(f.fields, v, false) {
			return true
		}
	}
	return false
}

func isGroupElem(fs []field, v int16) bool {
	for i := range fs {
		f := &fs[i]
		if f.ver.has(v) && f.typ == tString && (f.entity == eGroup || f.entity == eTxn || f.name == "Key") {
			return true
		}
	}
	return false
}

func hasPartition(fs []field, v int16) bool {
	for i := range fs {
		if fs[i].ver.has(v) && fs[i].typ == tInt32 && isPartitionField(fs[i].name) {
			return true
		}
	}
	return false
}

// isResourceArray reports whether a response array lists config
// resources (DescribeConfigs, AlterConfigs, IncrementalAlterConfigs): the
// topics of a denied request are answered there, as topic resources.
func (r *responder) isResourceArray(fs []field) bool {
	switch r.d.APIKey {
	case 32, 33, 44:
	default:
		return false
	}
	for i := range fs {
		if fs[i].ver.has(r.v) && fs[i].typ == tString && fs[i].name == "ResourceName" {
			return true
		}
	}
	return false
}

func (r *responder) errorCode(lv level) int16 {
	switch lv.kind {
	case lvTopic, lvPartition:
		return errTopicAuthorization
	case lvGroup:
		for _, e := range r.d.entries {
			if e.group == lv.group {
				return 0 // its topics carry the errors
			}
		}
		return r.code
	case lvTop:
		if r.mirror {
			return 0
		}
		return r.code
	}
	return 0
}

// invalidOnError reports whether a broker sets field name of a response
// of key to -1 (Kafka's "invalid" offset, node, port or epoch) in a
// struct it answers with an error, where the schema's default is 0:
// ProduceResponse BaseOffset, FetchResponse HighWatermark,
// OffsetFetchResponse CommittedOffset, FindCoordinatorResponse NodeId and
// Port, InitProducerIdResponse ProducerEpoch, DeleteRecordsResponse
// LowWatermark (checked against a Kafka 4.3 broker's answers by
// conformance/kafka TestDenyResponsesMatchBroker).
func invalidOnError(key int16, name string) bool {
	switch key {
	case keyProduce:
		return name == "BaseOffset"
	case keyFetch:
		return name == "HighWatermark"
	case keyOffsetFetch:
		return name == "CommittedOffset"
	case keyFindCoordinator:
		return name == "NodeId" || name == "Port"
	case keyInitProducerID:
		return name == "ProducerEpoch"
	case keyDeleteRecords:
		return name == "LowWatermark"
	}
	return false
}

// messageOnError reports whether a broker fills the ErrorMessage of a
// refused struct of a response of key (at level lv) with the error's
// default message; elsewhere it leaves the schema's default (null or "").
func messageOnError(key int16, lv level) bool {
	switch key {
	case keyFindCoordinator:
		return lv.kind == lvTop // v1-3; v4+ coordinators carry none
	case keyDescribeConfigs, keyAlterConfigs, keyIncrementalAlterConfigs, keyDescribeProducers:
		return true
	}
	return false
}

func (r *responder) fields(fs []field, lv level) {
	w := &r.w
	for i := range fs {
		f := &fs[i]
		if !f.ver.has(r.v) || (r.flex && f.tagged.has(r.v)) {
			continue
		}
		if f.typ.fixedSize() > 1 && f.typ.fixedSize() <= 8 && invalidOnError(r.d.APIKey, f.name) && r.errorCode(lv) != 0 {
			w.fixed(f.typ, -1)
			continue
		}
		switch f.typ {
		case tInt8:
			if lv.kind == lvTopic && f.name == "ResourceType" {
				w.int8(resourceTopic)
			} else {
				w.int8(int8(f.def))
			}
		case tInt16:
			if f.name == "ErrorCode" {
				w.int16(r.errorCode(lv))
			} else {
				w.int16(int16(f.def))
			}
		case tInt32:
			if lv.kind == lvPartition && isPartitionField(f.name) {
				w.int32(lv.part)
			} else {
				w.int32(int32(f.def))
			}
		case tUUID:
			if lv.kind == lvTopic && f.name == "TopicId" {
				id := r.d.entries[lv.entry].id
				w.b = append(w.b, id[:]...)
			} else {
				w.fixed(tUUID, 0)
			}
		case tString:
			s, null := "", f.null.has(r.v) && f.defNull
			switch {
			case lv.kind == lvTopic && (f.entity == eTopic || f.name == "ResourceName"):
				s, null = r.d.entries[lv.entry].name, false
				if s == "" && f.null.has(r.v) {
					null = true // named by ID only
				}
			case lv.kind == lvGroup && (f.entity == eGroup || f.entity == eTxn || f.name == "Key"):
				s, null = r.d.groups[lv.group].id, false
			case r.d.APIKey == keyJoinGroup && f.name == "ProtocolName" && f.null.has(r.v):
				null = true // the broker's JoinGroup error response (KafkaApis)
			case f.name == "ErrorMessage" && r.errorCode(lv) != 0 && messageOnError(r.d.APIKey, lv):
				s, null = errorMessage(r.errorCode(lv)), false
			}
			if null {
				w.length(r.flex, true, -1)
			} else {
				w.length(r.flex, true, len(s))
				w.b = append(w.b, s...)
			}
		case tRecords:
			// A broker answers a partition it refuses with an empty record
			// set (MemoryRecords.EMPTY), never a null one: clients before
			// nullable records (sarama before Fetch v12) cannot read null.
			w.length(r.flex, false, 0)
		case tBytes:
			if f.null.has(r.v) {
				w.length(r.flex, false, -1)
			} else {
				w.length(r.flex, false, 0)
			}
		case tStruct:
			if f.null.has(r.v) {
				w.int8(-1)
				continue
			}
			r.fields(f.fields, level{kind: lvOther, group: -1, entry: -1})
		case tArray:
			r.array(f, lv)
		default:
			w.fixed(f.typ, f.def)
		}
	}
	if r.flex {
		w.uvarint(0)
	}
}

func (r *responder) array(f *field, lv level) {
	w := &r.w
	if f.elem != tStruct {
		w.length(r.flex, false, 0)
		return
	}
	switch {
	case lv.kind == lvTop && isGroupElem(f.fields, r.v) && len(r.d.groups) > 0:
		w.length(r.flex, false, len(r.d.groups))
		for g := range r.d.groups {
			r.fields(f.fields, level{kind: lvGroup, group: g, entry: -1})
		}
	case (lv.kind == lvTop || lv.kind == lvGroup) && (hasTopic(f.fields, r.v) || r.isResourceArray(f.fields)):
		n := 0
		for _, e := range r.d.entries {
			if lv.kind == lvTop || e.group == lv.group {
				n++
			}
		}
		w.length(r.flex, false, n)
		for i, e := range r.d.entries {
			if lv.kind == lvTop || e.group == lv.group {
				r.fields(f.fields, level{kind: lvTopic, group: lv.group, entry: i})
			}
		}
	case lv.kind == lvTopic && hasPartition(f.fields, r.v):
		e := r.d.entries[lv.entry]
		w.length(r.flex, false, e.partTo-e.partFrom)
		for _, p := range r.d.parts[e.partFrom:e.partTo] {
			r.fields(f.fields, level{kind: lvPartition, group: lv.group, entry: lv.entry, part: p})
		}
	default:
		w.length(r.flex, false, 0)
	}
}

// A denied Metadata request is answered with the broker list, cluster id and
// controller of the real broker: clients ignore a metadata response without
// brokers and retry it forever (Kafka's NetworkClient treats it as a broker
// still starting). So the parser sends the broker a probe, the same request
// with no topic, and splices the denied topics, each with
// TOPIC_AUTHORIZATION_FAILED, into the broker's answer.

// metadataProbe encodes d's Metadata request without topics, with d's
// version, correlation id and client id, size prefix included. (At v0 an
// empty list means every topic; the splice replaces the topics anyway.)
func metadataProbe(d *decoded) ([]byte, error) {
	m := requestSchema(keyMetadata, d.APIVersion)
	if m == nil {
		return nil, fmt.Errorf("%w: metadata version %d", ErrUnsupported, d.APIVersion)
	}
	r := responder{d: &decoded{}, v: d.APIVersion, flex: m.flex.has(d.APIVersion)}
	r.w.b = []byte{0, 0, 0, 0}
	r.w.int16(keyMetadata)
	r.w.int16(d.APIVersion)
	r.w.int32(d.Correlation)
	r.w.length(false, true, len(d.ClientID))
	r.w.b = append(r.w.b, d.ClientID...)
	if r.flex {
		r.w.uvarint(0)
	}
	r.fields(m.fields, level{kind: lvOther, group: -1, entry: -1})
	binary.BigEndian.PutUint32(r.w.b, uint32(len(r.w.b)-4))
	return r.w.b, nil
}

// spliceMetadataDeny builds the deny response of the Metadata request d
// from the broker's response to its probe (frame without the size prefix).
func spliceMetadataDeny(d *decoded, probeResp []byte) ([]byte, error) {
	m := responseSchema(keyMetadata)
	if m == nil || !m.valid.has(d.APIVersion) {
		return nil, fmt.Errorf("%w: metadata version %d", ErrUnsupported, d.APIVersion)
	}
	flex := m.flex.has(d.APIVersion)
	rd := reader{b: probeResp}
	rd.skip(4)
	if flex {
		rd.taggedFields()
	}
	dc := decoder{mark: "Topics", cur: -1, curGrp: -1}
	dc.d.APIKey = -1
	dc.walk(&rd, m.fields, d.APIVersion, flex, 0)
	if rd.err != nil {
		return nil, fmt.Errorf("metadata probe response: %w", rd.err)
	}
	if dc.markTo <= dc.markFrom {
		return nil, fmt.Errorf("%w: metadata probe response has no topics field", ErrMalformed)
	}
	var topics *field
	for i := range m.fields {
		if m.fields[i].name == "Topics" {
			topics = &m.fields[i]
		}
	}
	r := responder{d: d, v: d.APIVersion, flex: flex, code: errTopicAuthorization, mirror: true}
	r.w.b = append([]byte{0, 0, 0, 0}, probeResp[:dc.markFrom]...)
	r.array(topics, level{kind: lvTop, group: -1, entry: -1})
	r.w.b = append(r.w.b, probeResp[dc.markTo:]...)
	binary.BigEndian.PutUint32(r.w.b, uint32(len(r.w.b)-4))
	return r.w.b, nil
}

// clone returns a copy of d that does not share the decoder's buffers.
func (d *decoded) clone() *decoded {
	c := *d
	c.Topics = append([]string(nil), d.Topics...)
	c.entries = append([]topicEntry(nil), d.entries...)
	c.groups = append([]groupEntry(nil), d.groups...)
	c.parts = append([]int32(nil), d.parts...)
	return &c
}

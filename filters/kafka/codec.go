package kafka

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// MaxFrameSize bounds one request or response frame (the 4-byte size
// prefix excluded). It is Kafka's default socket.request.max.bytes
// (100 MiB): a broker refuses larger requests too.
const MaxFrameSize = 100 << 20

// maxTopics bounds how many topic entries one request may carry before the
// codec refuses it; it bounds the decoder's memory independently of frame
// contents (a 100 MiB frame could otherwise name millions of topics).
const maxTopics = 1 << 16

// Errors the codec returns; wrapped with the step that failed.
var (
	ErrTruncated   = errors.New("truncated message")
	ErrMalformed   = errors.New("malformed message")
	ErrUnsupported = errors.New("unsupported api key or version")
	ErrTooLarge    = errors.New("frame larger than the maximum size")
)

// TopicID is a Kafka topic UUID (KIP-516).
type TopicID [16]byte

// topicEntry is one topic a request names, with the partitions it names
// under that topic, kept for building deny responses.
type topicEntry struct {
	name     string
	id       TopicID
	group    int // index in decoded.groups, -1 when the request has no group array
	partFrom int // range in decoded.parts
	partTo   int
}

// groupEntry is one group of a batched group request (OffsetFetch v8+,
// DescribeGroups, DeleteGroups).
type groupEntry struct {
	id string
}

// decoded is the result of reading one request. It is reused across
// requests of a connection; strings are interned per decoder.
type decoded struct {
	Request
	Correlation int32
	acks        int16 // Produce only
	txnSeen     bool
	groupSeen   bool
	unresolved  int // topic IDs the decoder could not name
	// topicCount is the length of the request's top-level topic array as
	// the request declares it (before its entries are read).
	topicCount int
	entries    []topicEntry
	groups     []groupEntry
	parts      []int32
	// opaque: the body was not walked (ApiVersions at a version newer than
	// the schemas); no deny response can be built for it.
	opaque bool
}

// decoder reads requests of one connection.
type decoder struct {
	d      decoded
	intern map[string]string
	ids    func(TopicID) (string, bool) // topic ID resolver
	cur    int                          // index of the entry being filled, or -1
	// mark names a top-level field whose byte range the walk records in
	// markFrom/markTo (used to splice deny responses into probes).
	mark             string
	markFrom, markTo int
	// forgetting is set while reading Fetch's ForgottenTopicsData: topics
	// a client removes from its fetch session (KIP-227) read nothing, and
	// a broker does not authorize them either.
	forgetting bool
	curGrp     int // index of the group being filled, or -1
}

const maxInterned = 4096

func (dc *decoder) str(b []byte) string {
	if s, ok := dc.intern[string(b)]; ok {
		return s
	}
	s := string(b)
	if dc.intern == nil {
		dc.intern = make(map[string]string)
	}
	if len(dc.intern) < maxInterned {
		dc.intern[s] = s
	}
	return s
}

// reader is a bounds-checked cursor over one frame.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

func (r *reader) need(n int) bool {
	if r.err != nil {
		return false
	}
	if n < 0 || n > len(r.b)-r.off {
		r.fail(ErrTruncated)
		return false
	}
	return true
}

func (r *reader) skip(n int) {
	if r.need(n) {
		r.off += n
	}
}

func (r *reader) int8() int8 {
	if !r.need(1) {
		return 0
	}
	v := int8(r.b[r.off])
	r.off++
	return v
}

func (r *reader) int16() int16 {
	if !r.need(2) {
		return 0
	}
	v := int16(binary.BigEndian.Uint16(r.b[r.off:]))
	r.off += 2
	return v
}

func (r *reader) int32() int32 {
	if !r.need(4) {
		return 0
	}
	v := int32(binary.BigEndian.Uint32(r.b[r.off:]))
	r.off += 4
	return v
}

func (r *reader) uvarint() uint32 {
	var v uint32
	for i := 0; i < 5; i++ {
		if !r.need(1) {
			return 0
		}
		c := r.b[r.off]
		r.off++
		if i == 4 && c > 0x0f {
			r.fail(fmt.Errorf("%w: unsigned varint overflows 32 bits", ErrMalformed))
			return 0
		}
		v |= uint32(c&0x7f) << (7 * i)
		if c < 0x80 {
			return v
		}
	}
	return v
}

// length reads a string/bytes/array length: compact (unsigned varint N+1,
// 0 = null) in flexible versions, else a signed int16 (strings) or int32.
// It returns -1 for null and fails on other negative lengths.
func (r *reader) length(flex, short bool) int {
	var n int
	switch {
	case flex:
		n = int(r.uvarint()) - 1
	case short:
		n = int(r.int16())
	default:
		n = int(r.int32())
	}
	if n < -1 {
		r.fail(fmt.Errorf("%w: negative length %d", ErrMalformed, n))
		return -1
	}
	return n
}

func (r *reader) bytes(flex, short bool) ([]byte, bool) {
	n := r.length(flex, short)
	if n < 0 || !r.need(n) {
		return nil, false
	}
	b := r.b[r.off : r.off+n]
	r.off += n
	return b, true
}

func (r *reader) taggedFields() {
	n := r.uvarint()
	for i := uint32(0); i < n && r.err == nil; i++ {
		r.uvarint() // tag
		r.skip(int(r.uvarint()))
	}
}

// header is a request header (v1 and v2; v0 has no client id and is only
// used by ControlledShutdown v0, which Kafka 4 no longer has).
type header struct {
	key, version int16
	correlation  int32
	clientID     []byte
}

func readHeader(r *reader) (header, *message, bool) {
	var h header
	h.key = r.int16()
	h.version = r.int16()
	h.correlation = r.int32()
	cid, _ := r.bytes(false, true) // client id is never compact (KIP-482)
	h.clientID = cid
	m := requestSchema(h.key, h.version)
	flex := m != nil && m.flex.has(h.version)
	if m == nil && h.key == keyApiVersions && h.version > 0 {
		// KIP-511: a client may try an ApiVersions version newer than the
		// broker's; the broker answers v0. The header is v2 from v3 on.
		flex = h.version >= 3
	}
	if flex {
		r.taggedFields()
	}
	return h, m, flex
}

// decodeRequest reads one request frame (without its 4-byte size).
func (dc *decoder) decodeRequest(frame []byte) (*decoded, error) {
	d := &dc.d
	*d = decoded{
		entries: d.entries[:0], groups: d.groups[:0], parts: d.parts[:0],
		Request: Request{Topics: d.Topics[:0]},
		acks:    -1,
	}
	dc.cur, dc.curGrp = -1, -1
	r := reader{b: frame}
	h, m, flex := readHeader(&r)
	if r.err != nil {
		return nil, fmt.Errorf("request header: %w", r.err)
	}
	d.APIKey, d.APIVersion, d.Correlation = h.key, h.version, h.correlation
	d.ClientID = dc.str(h.clientID)
	if m == nil {
		if h.key == keyApiVersions && h.version > 0 {
			d.opaque = true
			return d, nil
		}
		return nil, fmt.Errorf("%w: api key %d version %d", ErrUnsupported, h.key, h.version)
	}
	dc.walk(&r, m.fields, h.version, flex, 0)
	if r.err != nil {
		return nil, fmt.Errorf("%s v%d: %w", m.name, h.version, r.err)
	}
	if r.off != len(r.b) {
		return nil, fmt.Errorf("%s v%d: %w: %d bytes after the message", m.name, h.version, ErrMalformed, len(r.b)-r.off)
	}
	return d, nil
}

// decodePrefix reads the beginning of a request frame whose rest has not
// arrived (prefix: the frame without its size, cut anywhere). It returns
// what the walk read before running out of bytes, topic IDs of the entries
// it reached resolved, and false when the prefix is malformed rather than
// cut short.
func (dc *decoder) decodePrefix(prefix []byte) (*decoded, bool) {
	d, err := dc.decodeRequest(prefix)
	switch {
	case err == nil:
		return d, true
	case !errors.Is(err, ErrTruncated):
		return nil, false
	}
	d = &dc.d
	for i := range d.entries {
		if e := &d.entries[i]; e.name == "" && e.id != (TopicID{}) {
			if name, ok := dc.resolve(e.id); ok {
				dc.setName(i, name)
			}
		}
	}
	return d, true
}

func isPartitionField(name string) bool {
	switch name {
	case "PartitionIndex", "Partition", "Index", "PartitionId":
		return true
	}
	return false
}

// addEntry appends a topic entry and returns its index, or -1 (and fails
// r) when the request names too many topics.
func (dc *decoder) addEntry(r *reader) int {
	d := &dc.d
	if len(d.entries) >= maxTopics {
		r.fail(fmt.Errorf("%w: more than %d topics", ErrMalformed, maxTopics))
		return -1
	}
	d.entries = append(d.entries, topicEntry{group: dc.curGrp, partFrom: len(d.parts), partTo: len(d.parts)})
	return len(d.entries) - 1
}

func (dc *decoder) setName(i int, name string) {
	dc.d.entries[i].name = name
	dc.d.Topics = append(dc.d.Topics, name)
}

// walk reads the fields of one struct at version v.
func (dc *decoder) walk(r *reader, fields []field, v int16, flex bool, depth int) {
	marking := false
	resType := int8(-1) // ResourceType of a config or ACL resource in this struct
	for i := range fields {
		f := &fields[i]
		if !f.ver.has(v) || (flex && f.tagged.has(v)) {
			continue
		}
		if r.err != nil {
			return
		}
		if marking {
			dc.markTo, marking = r.off, false
		}
		if depth == 0 && dc.mark != "" && f.name == dc.mark {
			dc.markFrom, marking = r.off, true
		}
		switch f.typ {
		case tInt8:
			x := r.int8()
			if f.flags&flResourceType != 0 {
				resType = x
			}
		case tString:
			b, ok := r.bytes(flex, true)
			if f.flags&flResourceName != 0 && resType >= 0 {
				dc.resource(r, resType, b, ok)
			}
			if !ok {
				continue
			}
			switch f.entity {
			case eTopic:
				if dc.forgetting {
					break
				}
				if dc.cur >= 0 && dc.d.entries[dc.cur].name == "" && len(b) > 0 {
					dc.setName(dc.cur, dc.str(b))
				} else if dc.cur < 0 {
					if e := dc.addEntry(r); e >= 0 {
						dc.setName(e, dc.str(b))
					}
				}
			case eTxn:
				if len(b) > 0 {
					dc.d.txnSeen = true
					if depth == 0 {
						dc.d.TransactionalID = dc.str(b)
					}
				}
			case eGroup:
				dc.d.groupSeen = true
				if len(b) > 0 {
					if dc.curGrp >= 0 && dc.d.groups[dc.curGrp].id == "" {
						dc.d.groups[dc.curGrp].id = dc.str(b)
					}
				}
			default:
				if depth == 0 && f.flags&flCoordinatorKey != 0 && dc.d.APIKey == keyFindCoordinator {
					dc.d.groupSeen = true
				}
				if f.flags&flRegex != 0 && len(b) > 0 {
					// KIP-848 regex subscription: which topics it names is
					// the broker's business; only a rule without a topic
					// covers it.
					dc.d.AllTopics = true
				}
			}
		case tInt16:
			x := r.int16()
			if f.flags&flAcks != 0 && depth == 0 && dc.d.APIKey == keyProduce {
				dc.d.acks = x
			}
		case tInt32:
			x := r.int32()
			if f.flags&flPartition != 0 && dc.cur >= 0 && depth > 0 {
				dc.d.parts = append(dc.d.parts, x)
				dc.d.entries[dc.cur].partTo = len(dc.d.parts)
			}
		case tUUID:
			if !r.need(16) {
				continue
			}
			if f.flags&flTopicID != 0 && dc.cur >= 0 {
				copy(dc.d.entries[dc.cur].id[:], r.b[r.off:r.off+16])
			}
			r.off += 16
		case tBytes, tRecords:
			r.bytes(flex, false)
		case tStruct:
			if f.null.has(v) && r.int8() < 0 {
				continue
			}
			dc.walk(r, f.fields, v, flex, depth+1)
		case tArray:
			dc.array(r, f, v, flex, depth)
		default:
			r.skip(f.typ.fixedSize())
		}
	}
	if marking {
		dc.markTo = r.off
	}
	if flex {
		r.taggedFields()
	}
}

func (dc *decoder) array(r *reader, f *field, v int16, flex bool, depth int) {
	n := r.length(flex, false)
	if n <= 0 {
		if f.flags&flTopics != 0 {
			switch {
			case n < 0 && (dc.d.APIKey == keyMetadata || dc.d.APIKey == keyOffsetFetch):
				// Metadata v1+ and OffsetFetch v2+: null means every topic
				// (of the cluster, of the group).
				dc.d.AllTopics = true
			case n == 0 && dc.d.APIKey == keyMetadata && v == 0:
				dc.d.AllTopics = true // Metadata v0: empty means every topic
			}
		}
		return
	}
	if n > len(r.b)-r.off {
		// Every element takes at least one byte.
		r.fail(fmt.Errorf("%w: array %s of %d elements in %d bytes", ErrTruncated, f.name, n, len(r.b)-r.off))
		return
	}
	switch f.elem {
	case tStruct:
		if depth == 0 && f.flags&flForgotten != 0 && dc.d.APIKey == keyFetch {
			dc.forgetting = true
			defer func() { dc.forgetting = false }()
		}
		isGroupArray := depth == 0 && f.groupVers.has(v)
		isTopicArray := f.topicVers.has(v) && !dc.forgetting
		if isTopicArray && depth == 0 {
			dc.d.topicCount = n
		}
		for j := 0; j < n && r.err == nil; j++ {
			saveCur, saveGrp := dc.cur, dc.curGrp
			if isGroupArray {
				dc.d.groups = append(dc.d.groups, groupEntry{})
				dc.curGrp = len(dc.d.groups) - 1
			}
			var start int
			if isTopicArray {
				start = len(dc.d.entries)
				dc.cur = dc.addEntry(r)
				if dc.cur < 0 {
					return
				}
			}
			dc.walk(r, f.fields, v, flex, depth+1)
			if isTopicArray && r.err == nil {
				e := &dc.d.entries[start]
				if e.name == "" && e.id != (TopicID{}) {
					if name, ok := dc.resolve(e.id); ok {
						dc.setName(start, name)
					} else {
						dc.d.unresolved++
					}
				}
			}
			dc.cur, dc.curGrp = saveCur, saveGrp
		}
	case tString:
		for j := 0; j < n && r.err == nil; j++ {
			b, ok := r.bytes(flex, true)
			if !ok {
				continue
			}
			switch f.entity {
			case eTopic:
				if e := dc.addEntry(r); e >= 0 {
					dc.setName(e, dc.str(b))
				}
			case eGroup:
				dc.d.groupSeen = true
				if depth == 0 {
					dc.d.groups = append(dc.d.groups, groupEntry{id: dc.str(b)})
				}
			case eTxn:
				// DescribeTransactions: each id is answered in its own
				// entry, as a group of a batched group request is.
				dc.d.txnSeen = true
				if depth == 0 {
					dc.d.groups = append(dc.d.groups, groupEntry{id: dc.str(b)})
				}
			default:
				if f.flags&flRegex != 0 && len(b) > 0 {
					dc.d.AllTopics = true // KIP-1071 streams groups: see SubscribedTopicRegex
				}
				if depth == 0 && f.flags&flCoordinatorKey != 0 && dc.d.APIKey == keyFindCoordinator {
					// FindCoordinator v4+ batches keys; the response answers
					// each (KIP-699).
					dc.d.groupSeen = true
					dc.d.groups = append(dc.d.groups, groupEntry{id: dc.str(b)})
				}
			}
		}
	case tInt32:
		if !r.need(4 * n) {
			return
		}
		if dc.cur >= 0 && f.flags&flPartitionList != 0 {
			for j := 0; j < n; j++ {
				dc.d.parts = append(dc.d.parts, int32(binary.BigEndian.Uint32(r.b[r.off+4*j:])))
			}
			dc.d.entries[dc.cur].partTo = len(dc.d.parts)
		}
		r.off += 4 * n
	case tUUID:
		if !r.need(16 * n) {
			return
		}
		if f.flags&flTopicIDs != 0 {
			for j := 0; j < n; j++ {
				var id TopicID
				copy(id[:], r.b[r.off+16*j:])
				e := dc.addEntry(r)
				if e < 0 {
					return
				}
				dc.d.entries[e].id = id
				if name, ok := dc.resolve(id); ok {
					dc.setName(e, name)
				} else {
					dc.d.unresolved++
				}
			}
		}
		r.off += 16 * n
	case tBytes, tRecords:
		for j := 0; j < n && r.err == nil; j++ {
			r.bytes(flex, false)
		}
	default:
		sz := f.elem.fixedSize()
		if sz == 0 {
			r.fail(fmt.Errorf("%w: array %s of unknown type", ErrMalformed, f.name))
			return
		}
		r.skip(sz * n)
	}
}

// Resource types of config resources (DescribeConfigs, AlterConfigs,
// IncrementalAlterConfigs) and ACL bindings (CreateAcls, DescribeAcls,
// DeleteAcls).
const (
	resourceAny   = 1
	resourceTopic = 2
)

// resource handles a resource name: a topic config resource names that
// topic; an ACL binding or filter on topics (or on any resource, or by
// pattern) may reach every topic, so only a rule without a topic covers it.
func (dc *decoder) resource(r *reader, typ int8, name []byte, ok bool) {
	switch key := dc.d.APIKey; {
	case key == 29 || key == 30 || key == 31: // DescribeAcls, CreateAcls, DeleteAcls
		if typ == resourceAny || typ == resourceTopic {
			dc.d.AllTopics = true
		}
	case typ == resourceTopic:
		if !ok {
			dc.d.AllTopics = true
			return
		}
		if e := dc.addEntry(r); e >= 0 {
			dc.setName(e, dc.str(name))
		}
	}
}

func (dc *decoder) resolve(id TopicID) (string, bool) {
	if dc.ids == nil {
		return "", false
	}
	return dc.ids(id)
}

func hasTopic(fs []field, v int16) bool {
	for i := range fs {
		f := &fs[i]
		if !f.ver.has(v) {
			continue
		}
		if f.typ == tString && f.entity == eTopic || f.typ == tUUID && f.name == "TopicId" {
			return true
		}
	}
	return false
}

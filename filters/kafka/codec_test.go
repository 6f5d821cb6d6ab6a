package kafka

import (
	"encoding/binary"
	"errors"
	"sort"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// frame encodes req (at its version) with a request header, the way a
// client would, without the 4-byte size prefix. kmsg (franz-go) is an
// independent encoder of the same schemas, so the tests check the codec
// against another implementation.
func frame(req kmsg.Request, corr int32, clientID string) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(req.Key()))
	b = binary.BigEndian.AppendUint16(b, uint16(req.GetVersion()))
	b = binary.BigEndian.AppendUint32(b, uint32(corr))
	b = binary.BigEndian.AppendUint16(b, uint16(len(clientID)))
	b = append(b, clientID...)
	if req.IsFlexible() {
		b = append(b, 0)
	}
	return req.AppendTo(b)
}

func sizePrefixed(f []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(f))), f...)
}

// TestVersionMatrixEmpty decodes the default (empty) request of every API key
// at every version both Kafka 4.3's schemas and kmsg know.
func TestVersionMatrixEmpty(t *testing.T) {
	n := 0
	for key, m := range requestSchemas {
		if m == nil {
			continue
		}
		req := kmsg.RequestForKey(int16(key))
		if req == nil {
			continue
		}
		for v := m.valid.lo; v <= m.valid.hi && v <= req.MaxVersion(); v++ {
			req.SetVersion(v)
			var dc decoder
			d, err := dc.decodeRequest(frame(req, 7, "c"))
			if err != nil {
				t.Errorf("%s v%d: decode: %v", m.name, v, err)
				continue
			}
			if d.APIKey != int16(key) || d.APIVersion != v || d.Correlation != 7 || d.ClientID != "c" {
				t.Errorf("%s v%d: header = %d v%d corr %d %q", m.name, v, d.APIKey, d.APIVersion, d.Correlation, d.ClientID)
			}
			n++
		}
	}
	if n < 300 {
		t.Errorf("decoded %d key/version pairs; want the whole protocol (>= 300)", n)
	}
}

var idA = TopicID{1, 2, 3}

func resolver(id TopicID) (string, bool) {
	if id == idA {
		return "by-id", true
	}
	return "", false
}

// topicRequests builds, for one version, requests of the topic-bearing API
// keys naming the topics "a" and "b" (or idA by ID where the version names
// topics by ID).
var topicRequests = map[int16]func(v int16) (kmsg.Request, []string){
	keyProduce: func(v int16) (kmsg.Request, []string) {
		r := kmsg.NewPtrProduceRequest()
		r.Acks = 1
		for _, n := range []string{"a", "b"} {
			tp := kmsg.NewProduceRequestTopic()
			tp.Topic = n
			tp.TopicID = idA
			p := kmsg.NewProduceRequestTopicPartition()
			p.Partition = 3
			p.Records = make([]byte, 100)
			tp.Partitions = append(tp.Partitions, p)
			r.Topics = append(r.Topics, tp)
		}
		if v >= 13 {
			return r, []string{"by-id", "by-id"}
		}
		return r, []string{"a", "b"}
	},
	keyFetch: func(v int16) (kmsg.Request, []string) {
		r := kmsg.NewPtrFetchRequest()
		tp := kmsg.NewFetchRequestTopic()
		tp.Topic = "a"
		tp.TopicID = idA
		tp.Partitions = append(tp.Partitions, kmsg.NewFetchRequestTopicPartition())
		r.Topics = append(r.Topics, tp)
		ft := kmsg.NewFetchRequestForgottenTopic()
		ft.Topic = "b"
		ft.TopicID = idA
		ft.Partitions = []int32{1}
		if v >= 7 {
			r.ForgottenTopics = append(r.ForgottenTopics, ft)
		}
		// Forgotten topics (KIP-227) are not topics the request reads.
		if v >= 13 {
			return r, []string{"by-id"}
		}
		return r, []string{"a"}
	},
	keyListOffsets: func(v int16) (kmsg.Request, []string) {
		r := kmsg.NewPtrListOffsetsRequest()
		for _, n := range []string{"a", "b"} {
			tp := kmsg.NewListOffsetsRequestTopic()
			tp.Topic = n
			tp.Partitions = append(tp.Partitions, kmsg.NewListOffsetsRequestTopicPartition())
			r.Topics = append(r.Topics, tp)
		}
		return r, []string{"a", "b"}
	},
	keyMetadata: func(v int16) (kmsg.Request, []string) {
		r := kmsg.NewPtrMetadataRequest()
		for _, n := range []string{"a", "b"} {
			tp := kmsg.NewMetadataRequestTopic()
			tp.Topic = kmsg.StringPtr(n)
			r.Topics = append(r.Topics, tp)
		}
		return r, []string{"a", "b"}
	},
	keyOffsetCommit: func(v int16) (kmsg.Request, []string) {
		r := kmsg.NewPtrOffsetCommitRequest()
		r.Group = "g"
		tp := kmsg.NewOffsetCommitRequestTopic()
		tp.Topic = "a"
		tp.TopicID = idA
		tp.Partitions = append(tp.Partitions, kmsg.NewOffsetCommitRequestTopicPartition())
		r.Topics = append(r.Topics, tp)
		if v >= 10 {
			return r, []string{"by-id"}
		}
		return r, []string{"a"}
	},
	keyOffsetFetch: func(v int16) (kmsg.Request, []string) {
		r := kmsg.NewPtrOffsetFetchRequest()
		r.Group = "g"
		tp := kmsg.NewOffsetFetchRequestTopic()
		tp.Topic = "a"
		tp.Partitions = []int32{0, 1}
		r.Topics = append(r.Topics, tp)
		g := kmsg.NewOffsetFetchRequestGroup()
		g.Group = "g"
		gt := kmsg.NewOffsetFetchRequestGroupTopic()
		gt.Topic = "b"
		gt.TopicID = idA
		gt.Partitions = []int32{0}
		g.Topics = append(g.Topics, gt)
		r.Groups = append(r.Groups, g)
		switch {
		case v >= 10:
			return r, []string{"by-id"}
		case v >= 8:
			return r, []string{"b"}
		}
		return r, []string{"a"}
	},
	keyOffsetForLeaderEpoch: func(v int16) (kmsg.Request, []string) {
		r := kmsg.NewPtrOffsetForLeaderEpochRequest()
		tp := kmsg.NewOffsetForLeaderEpochRequestTopic()
		tp.Topic = "a"
		tp.Partitions = append(tp.Partitions, kmsg.NewOffsetForLeaderEpochRequestTopicPartition())
		r.Topics = append(r.Topics, tp)
		return r, []string{"a"}
	},
	19: func(v int16) (kmsg.Request, []string) { // CreateTopics
		r := kmsg.NewPtrCreateTopicsRequest()
		tp := kmsg.NewCreateTopicsRequestTopic()
		tp.Topic = "a"
		r.Topics = append(r.Topics, tp)
		return r, []string{"a"}
	},
	20: func(v int16) (kmsg.Request, []string) { // DeleteTopics
		r := kmsg.NewPtrDeleteTopicsRequest()
		r.TopicNames = []string{"a", "b"}
		tp := kmsg.NewDeleteTopicsRequestTopic()
		tp.Topic = kmsg.StringPtr("a")
		tp2 := kmsg.NewDeleteTopicsRequestTopic()
		tp2.TopicID = idA
		r.Topics = append(r.Topics, tp, tp2)
		if v >= 6 {
			return r, []string{"a", "by-id"}
		}
		return r, []string{"a", "b"}
	},
	21: func(v int16) (kmsg.Request, []string) { // DeleteRecords
		r := kmsg.NewPtrDeleteRecordsRequest()
		tp := kmsg.NewDeleteRecordsRequestTopic()
		tp.Topic = "a"
		r.Topics = append(r.Topics, tp)
		return r, []string{"a"}
	},
	28: func(v int16) (kmsg.Request, []string) { // TxnOffsetCommit
		r := kmsg.NewPtrTxnOffsetCommitRequest()
		r.TransactionalID = "tx"
		r.Group = "g"
		tp := kmsg.NewTxnOffsetCommitRequestTopic()
		tp.Topic = "a"
		r.Topics = append(r.Topics, tp)
		return r, []string{"a"}
	},
	37: func(v int16) (kmsg.Request, []string) { // CreatePartitions
		r := kmsg.NewPtrCreatePartitionsRequest()
		tp := kmsg.NewCreatePartitionsRequestTopic()
		tp.Topic = "a"
		r.Topics = append(r.Topics, tp)
		return r, []string{"a"}
	},
	keyConsumerGroupHeartbeat: func(v int16) (kmsg.Request, []string) {
		r := kmsg.NewPtrConsumerGroupHeartbeatRequest()
		r.Group = "g"
		r.SubscribedTopicNames = []string{"a", "b"}
		return r, []string{"a", "b"}
	},
	75: func(v int16) (kmsg.Request, []string) { // DescribeTopicPartitions
		r := kmsg.NewPtrDescribeTopicPartitionsRequest()
		tp := kmsg.NewDescribeTopicPartitionsRequestTopic()
		tp.Topic = "a"
		r.Topics = append(r.Topics, tp)
		return r, []string{"a"}
	},
}

// TestVersionMatrixTopics checks that every topic a request names is found,
// at every version of the topic-bearing keys.
func TestVersionMatrixTopics(t *testing.T) {
	for key, build := range topicRequests {
		m := requestSchemas[key]
		for v := m.valid.lo; v <= m.valid.hi; v++ {
			req, want := build(v)
			if v > req.MaxVersion() {
				continue
			}
			req.SetVersion(v)
			dc := decoder{ids: resolver}
			d, err := dc.decodeRequest(frame(req, 1, "cid"))
			if err != nil {
				t.Errorf("%s v%d: decode: %v", m.name, v, err)
				continue
			}
			got := append([]string(nil), d.Topics...)
			sort.Strings(got)
			sort.Strings(want)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("%s v%d topics (-want +got):\n%s", m.name, v, diff)
			}
		}
	}
}

func TestDecodeDetails(t *testing.T) {
	t.Run("metadata null topics is all topics", func(t *testing.T) {
		r := kmsg.NewPtrMetadataRequest()
		r.SetVersion(12)
		r.Topics = nil
		var dc decoder
		d, err := dc.decodeRequest(frame(r, 1, ""))
		if err != nil || !d.AllTopics {
			t.Fatalf("decode = %+v, %v; want AllTopics", d, err)
		}
	})
	t.Run("metadata empty topics is no topic", func(t *testing.T) {
		r := kmsg.NewPtrMetadataRequest()
		r.SetVersion(12)
		r.Topics = []kmsg.MetadataRequestTopic{}
		var dc decoder
		d, err := dc.decodeRequest(frame(r, 1, ""))
		if err != nil || d.AllTopics || len(d.Topics) != 0 {
			t.Fatalf("decode = %+v, %v; want no topic", d, err)
		}
	})
	t.Run("produce acks and partitions", func(t *testing.T) {
		r, _ := topicRequests[keyProduce](9)
		r.SetVersion(9)
		r.(*kmsg.ProduceRequest).Acks = 0
		var dc decoder
		d, err := dc.decodeRequest(frame(r, 1, ""))
		if err != nil {
			t.Fatal(err)
		}
		if d.acks != 0 || len(d.entries) != 2 || d.entries[0].partTo-d.entries[0].partFrom != 1 || d.parts[0] != 3 {
			t.Errorf("decode = acks %d entries %+v parts %v", d.acks, d.entries, d.parts)
		}
	})
	t.Run("unresolved topic id", func(t *testing.T) {
		r, _ := topicRequests[keyFetch](13)
		r.SetVersion(13)
		var dc decoder
		d, err := dc.decodeRequest(frame(r, 1, ""))
		if err != nil || d.unresolved != 1 {
			t.Fatalf("decode = unresolved %d, %v; want 1", d.unresolved, err)
		}
	})
	t.Run("transactional id", func(t *testing.T) {
		r := kmsg.NewPtrInitProducerIDRequest()
		r.SetVersion(4)
		r.TransactionalID = kmsg.StringPtr("tx")
		var dc decoder
		d, err := dc.decodeRequest(frame(r, 1, ""))
		if err != nil || d.TransactionalID != "tx" {
			t.Fatalf("decode = %q, %v; want tx", d.TransactionalID, err)
		}
	})
	t.Run("newer apiversions is opaque", func(t *testing.T) {
		b := []byte{0, 18, 0, 99, 0, 0, 0, 1, 0, 0, 0, 1, 2, 3}
		var dc decoder
		d, err := dc.decodeRequest(b)
		if err != nil || !d.opaque {
			t.Fatalf("decode = %+v, %v; want opaque", d, err)
		}
	})
}

func TestDecodeBadInput(t *testing.T) {
	good := frame(func() kmsg.Request { r, _ := topicRequests[keyProduce](9); r.SetVersion(9); return r }(), 1, "c")
	tests := []struct {
		name  string
		frame []byte
		want  error
	}{
		{name: "empty", frame: nil, want: ErrTruncated},
		{name: "truncated", frame: good[:len(good)-5], want: ErrTruncated},
		{name: "trailing bytes", frame: append(append([]byte(nil), good...), 0), want: ErrMalformed},
		{name: "unknown key", frame: []byte{0x7f, 0, 0, 0, 0, 0, 0, 1, 0, 0}, want: ErrUnsupported},
		{name: "removed version", frame: []byte{0, 0, 0, 1, 0, 0, 0, 1, 0, 0}, want: ErrUnsupported},
		{name: "negative array", frame: []byte{0, 3, 0, 1, 0, 0, 0, 1, 0, 0, 0xff, 0xff, 0xff, 0xfe}, want: ErrMalformed},
		{name: "huge array", frame: []byte{0, 3, 0, 1, 0, 0, 0, 1, 0, 0, 0x7f, 0xff, 0xff, 0xff}, want: ErrTruncated},
		{name: "bad varint", frame: []byte{0, 3, 0, 12, 0, 0, 0, 1, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, want: ErrMalformed},
		{name: "negative string", frame: []byte{0, 3, 0, 1, 0, 0, 0, 1, 0xff, 0xf0}, want: ErrMalformed},
	}
	for _, tt := range tests {
		var dc decoder
		_, err := dc.decodeRequest(tt.frame)
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: decodeRequest(%x) error = %v; want %v", tt.name, tt.frame, err, tt.want)
		}
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for key, build := range topicRequests {
		m := requestSchemas[key]
		for _, v := range []int16{m.valid.lo, m.valid.hi} {
			req, _ := build(v)
			if v <= req.MaxVersion() {
				req.SetVersion(v)
				f.Add(frame(req, 1, "c"))
			}
		}
	}
	for _, b := range realClientFrames(f) {
		f.Add(b[4:])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		dc := decoder{ids: resolver}
		d, err := dc.decodeRequest(b)
		if err != nil {
			return
		}
		if len(d.Topics) > len(b) {
			t.Fatalf("%d topics from %d bytes", len(d.Topics), len(b))
		}
	})
}

func BenchmarkDecodeProduce(b *testing.B) {
	r, _ := topicRequests[keyProduce](11)
	r.SetVersion(11)
	pr := r.(*kmsg.ProduceRequest)
	pr.Topics[0].Partitions[0].Records = make([]byte, 16<<10)
	f := frame(r, 1, "producer-1")
	var dc decoder
	b.ReportAllocs()
	b.SetBytes(int64(len(f)))
	for b.Loop() {
		if _, err := dc.decodeRequest(f); err != nil {
			b.Fatal(err)
		}
	}
}

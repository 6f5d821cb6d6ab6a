package kafka

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"
	kfilter "github.com/wardproxy/ward/filters/kafka"
	"github.com/wardproxy/ward/policy/l7"
)

// rawRoundTrip sends req (version set) with correlation id corr on a new
// connection to addr and returns the response frame, size prefix
// excluded, as the peer wrote it.
func rawRoundTrip(addr string, req kmsg.Request, corr int32) ([]byte, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second)) // a bound on a hang
	body := binary.BigEndian.AppendUint16(nil, uint16(req.Key()))
	body = binary.BigEndian.AppendUint16(body, uint16(req.GetVersion()))
	body = binary.BigEndian.AppendUint32(body, uint32(corr))
	const clientID = "ward-deny-test"
	body = binary.BigEndian.AppendUint16(body, uint16(len(clientID)))
	body = append(body, clientID...)
	if req.IsFlexible() {
		body = append(body, 0)
	}
	body = req.AppendTo(body)
	if _, err := c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)); err != nil {
		return nil, err
	}
	var size [4]byte
	if _, err := io.ReadFull(c, size[:]); err != nil {
		return nil, fmt.Errorf("read response size: %w", err)
	}
	resp := make([]byte, binary.BigEndian.Uint32(size[:]))
	if _, err := io.ReadFull(c, resp); err != nil {
		return nil, fmt.Errorf("read response: %w", err)
	}
	return resp, nil
}

// recordBatch is a v2 record batch of one record (magic 2, CRC-32C).
func recordBatch(value string) []byte {
	rec := []byte{0}                  // attributes
	rec = binary.AppendVarint(rec, 0) // timestamp delta
	rec = binary.AppendVarint(rec, 0) // offset delta
	rec = binary.AppendVarint(rec, -1)
	rec = binary.AppendVarint(rec, int64(len(value)))
	rec = append(rec, value...)
	rec = binary.AppendVarint(rec, 0) // headers
	var tail []byte                   // from attributes to the end: what the CRC covers
	tail = binary.BigEndian.AppendUint16(tail, 0)
	tail = binary.BigEndian.AppendUint32(tail, 0) // last offset delta
	tail = binary.BigEndian.AppendUint64(tail, 1700000000000)
	tail = binary.BigEndian.AppendUint64(tail, 1700000000000)
	tail = binary.BigEndian.AppendUint64(tail, ^uint64(0)) // producer id -1
	tail = binary.BigEndian.AppendUint16(tail, 0xffff)
	tail = binary.BigEndian.AppendUint32(tail, 0xffffffff)
	tail = binary.BigEndian.AppendUint32(tail, 1)
	tail = binary.AppendVarint(tail, int64(len(rec)))
	tail = append(tail, rec...)
	b := binary.BigEndian.AppendUint64(nil, 0)                    // base offset
	b = binary.BigEndian.AppendUint32(b, uint32(4+1+4+len(tail))) // batch length
	b = binary.BigEndian.AppendUint32(b, 0xffffffff)              // partition leader epoch
	b = append(b, 2)                                              // magic
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(tail, crc32.MakeTable(crc32.Castagnoli)))
	return append(b, tail...)
}

const (
	deniedTopic2 = "denied-topic-2"
	deniedTopic  = "denied-topic"
	deniedGroup  = "denied-group"
	deniedTxn    = "denied-txn"
	openTxn      = "open-txn"
	openGroup    = "open-group"
)

// denyCases build, for a version, a request a broker's authorizer refuses
// (its topic, group or transactional id has a DENY ACL) and ward's rules
// refuse too. Requests a broker authorizes on the cluster before the topic
// (CreateTopics, DeleteTopics, OffsetForLeaderEpoch) are not here: every
// client is User:ANONYMOUS on PLAINTEXT, and the broker itself needs the
// cluster rights as that principal.
var (
	deniedTopicID [16]byte    // set by TestDenyResponsesMatchBroker before the cases run
	deniedIDs     [2][16]byte // the IDs of deniedTopic and deniedTopic2
)

var denyCases = []struct {
	name  string
	build func(v int16) kmsg.Request
	// unordered: the broker answers in an order of its own (Produce: a
	// Java HashMap's iteration order), so the answers are compared with
	// their topics and partitions sorted; every byte else is compared.
	unordered bool
}{
	{name: "Produce", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrProduceRequest()
		r.Acks, r.TimeoutMillis = 1, 5000
		tp := kmsg.NewProduceRequestTopic()
		tp.Topic, tp.TopicID = deniedTopic, deniedTopicID
		p := kmsg.NewProduceRequestTopicPartition()
		p.Records = recordBatch("x")
		tp.Partitions = append(tp.Partitions, p)
		r.Topics = append(r.Topics, tp)
		return r
	}},
	{name: "Fetch", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrFetchRequest()
		r.MaxWaitMillis, r.MinBytes, r.MaxBytes, r.SessionEpoch = 0, 1, 1<<20, -1
		tp := kmsg.NewFetchRequestTopic()
		tp.Topic, tp.TopicID = deniedTopic, deniedTopicID
		p := kmsg.NewFetchRequestTopicPartition()
		p.PartitionMaxBytes = 1 << 20
		tp.Partitions = append(tp.Partitions, p)
		r.Topics = append(r.Topics, tp)
		return r
	}},
	{name: "ListOffsets", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrListOffsetsRequest()
		tp := kmsg.NewListOffsetsRequestTopic()
		tp.Topic = deniedTopic
		p := kmsg.NewListOffsetsRequestTopicPartition()
		p.Timestamp = -1
		tp.Partitions = append(tp.Partitions, p)
		r.Topics = append(r.Topics, tp)
		return r
	}},
	{name: "Metadata", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrMetadataRequest()
		tp := kmsg.NewMetadataRequestTopic()
		tp.Topic = kmsg.StringPtr(deniedTopic)
		r.Topics = append(r.Topics, tp)
		return r
	}},
	{name: "OffsetCommit", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrOffsetCommitRequest()
		r.Group = openGroup
		tp := kmsg.NewOffsetCommitRequestTopic()
		tp.Topic, tp.TopicID = deniedTopic, deniedTopicID
		tp.Partitions = append(tp.Partitions, kmsg.NewOffsetCommitRequestTopicPartition())
		r.Topics = append(r.Topics, tp)
		return r
	}},
	{name: "OffsetFetch", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrOffsetFetchRequest()
		r.Group = openGroup
		tp := kmsg.NewOffsetFetchRequestTopic()
		tp.Topic = deniedTopic
		tp.Partitions = []int32{0}
		r.Topics = append(r.Topics, tp)
		g := kmsg.NewOffsetFetchRequestGroup()
		g.Group = openGroup
		gt := kmsg.NewOffsetFetchRequestGroupTopic()
		gt.Topic, gt.TopicID = deniedTopic, deniedTopicID
		gt.Partitions = []int32{0}
		g.Topics = append(g.Topics, gt)
		r.Groups = append(r.Groups, g)
		return r
	}},
	{name: "FindCoordinator", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrFindCoordinatorRequest()
		r.CoordinatorKey = deniedGroup
		r.CoordinatorKeys = []string{deniedGroup}
		return r
	}},
	{name: "JoinGroup", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrJoinGroupRequest()
		r.Group, r.SessionTimeoutMillis, r.RebalanceTimeoutMillis, r.ProtocolType = deniedGroup, 10000, 10000, "consumer"
		p := kmsg.NewJoinGroupRequestProtocol()
		p.Name = "range"
		r.Protocols = append(r.Protocols, p)
		return r
	}},
	{name: "Heartbeat", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrHeartbeatRequest()
		r.Group, r.MemberID = deniedGroup, "m"
		return r
	}},
	{name: "SyncGroup", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrSyncGroupRequest()
		r.Group, r.MemberID = deniedGroup, "m"
		r.ProtocolType, r.Protocol = kmsg.StringPtr("consumer"), kmsg.StringPtr("range") // v5+ checks them first
		return r
	}},
	{name: "LeaveGroup", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrLeaveGroupRequest()
		r.Group, r.MemberID = deniedGroup, "m"
		m := kmsg.NewLeaveGroupRequestMember()
		m.MemberID = "m"
		r.Members = append(r.Members, m)
		return r
	}},
	// Two topics (and two partitions of one): the broker answers in
	// request order.
	{name: "Produce2", unordered: true, build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrProduceRequest()
		r.Acks, r.TimeoutMillis = 1, 5000
		for i, n := range []string{deniedTopic, deniedTopic2} {
			tp := kmsg.NewProduceRequestTopic()
			tp.Topic, tp.TopicID = n, deniedIDs[i]
			for part := range int32(2) {
				p := kmsg.NewProduceRequestTopicPartition()
				p.Partition, p.Records = part, recordBatch("x")
				tp.Partitions = append(tp.Partitions, p)
			}
			r.Topics = append(r.Topics, tp)
		}
		return r
	}},
	{name: "Fetch2", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrFetchRequest()
		r.MaxWaitMillis, r.MinBytes, r.MaxBytes, r.SessionEpoch = 0, 1, 1<<20, -1
		for i, n := range []string{deniedTopic, deniedTopic2} {
			tp := kmsg.NewFetchRequestTopic()
			tp.Topic, tp.TopicID = n, deniedIDs[i]
			for part := range int32(2) {
				p := kmsg.NewFetchRequestTopicPartition()
				p.Partition, p.PartitionMaxBytes = part, 1<<20
				tp.Partitions = append(tp.Partitions, p)
			}
			r.Topics = append(r.Topics, tp)
		}
		return r
	}},
	{name: "Metadata2", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrMetadataRequest()
		for _, n := range []string{deniedTopic, deniedTopic2} {
			tp := kmsg.NewMetadataRequestTopic()
			tp.Topic = kmsg.StringPtr(n)
			r.Topics = append(r.Topics, tp)
		}
		return r
	}},
	{name: "ListOffsets2", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrListOffsetsRequest()
		for _, n := range []string{deniedTopic, deniedTopic2} {
			tp := kmsg.NewListOffsetsRequestTopic()
			tp.Topic = n
			for part := range int32(2) {
				p := kmsg.NewListOffsetsRequestTopicPartition()
				p.Partition, p.Timestamp = part, -1
				tp.Partitions = append(tp.Partitions, p)
			}
			r.Topics = append(r.Topics, tp)
		}
		return r
	}},
	{name: "OffsetCommit2", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrOffsetCommitRequest()
		r.Group = openGroup
		for i, n := range []string{deniedTopic, deniedTopic2} {
			tp := kmsg.NewOffsetCommitRequestTopic()
			tp.Topic, tp.TopicID = n, deniedIDs[i]
			for part := range int32(2) {
				p := kmsg.NewOffsetCommitRequestTopicPartition()
				p.Partition = part
				tp.Partitions = append(tp.Partitions, p)
			}
			r.Topics = append(r.Topics, tp)
		}
		return r
	}},
	{name: "DescribeGroups", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrDescribeGroupsRequest()
		r.Groups = []string{deniedGroup}
		return r
	}},
	{name: "DeleteGroups", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrDeleteGroupsRequest()
		r.Groups = []string{deniedGroup}
		return r
	}},
	{name: "DescribeConfigs", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrDescribeConfigsRequest()
		rs := kmsg.NewDescribeConfigsRequestResource()
		rs.ResourceType, rs.ResourceName = kmsg.ConfigResourceTypeTopic, deniedTopic
		r.Resources = append(r.Resources, rs)
		return r
	}},
	{name: "AlterConfigs", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrAlterConfigsRequest()
		rs := kmsg.NewAlterConfigsRequestResource()
		rs.ResourceType, rs.ResourceName = kmsg.ConfigResourceTypeTopic, deniedTopic
		r.Resources = append(r.Resources, rs)
		return r
	}},
	{name: "IncrementalAlterConfigs", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrIncrementalAlterConfigsRequest()
		rs := kmsg.NewIncrementalAlterConfigsRequestResource()
		rs.ResourceType, rs.ResourceName = kmsg.ConfigResourceTypeTopic, deniedTopic
		r.Resources = append(r.Resources, rs)
		return r
	}},
	{name: "DeleteRecords", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrDeleteRecordsRequest()
		r.TimeoutMillis = 5000
		tp := kmsg.NewDeleteRecordsRequestTopic()
		tp.Topic = deniedTopic
		p := kmsg.NewDeleteRecordsRequestTopicPartition()
		tp.Partitions = append(tp.Partitions, p)
		r.Topics = append(r.Topics, tp)
		return r
	}},
	{name: "DescribeProducers", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrDescribeProducersRequest()
		tp := kmsg.NewDescribeProducersRequestTopic()
		tp.Topic, tp.Partitions = deniedTopic, []int32{0}
		r.Topics = append(r.Topics, tp)
		return r
	}},
	{name: "DescribeTopicPartitions", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrDescribeTopicPartitionsRequest()
		r.ResponsePartitionLimit = 100
		tp := kmsg.NewDescribeTopicPartitionsRequestTopic()
		tp.Topic = deniedTopic
		r.Topics = append(r.Topics, tp)
		return r
	}},
	{name: "AddOffsetsToTxn", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrAddOffsetsToTxnRequest()
		r.TransactionalID, r.Group = deniedTxn, openGroup
		return r
	}},
	{name: "EndTxn", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrEndTxnRequest()
		r.TransactionalID = deniedTxn
		return r
	}},
	{name: "TxnOffsetCommit", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrTxnOffsetCommitRequest()
		r.TransactionalID, r.Group = openTxn, openGroup // the topic is refused
		tp := kmsg.NewTxnOffsetCommitRequestTopic()
		tp.Topic = deniedTopic
		tp.Partitions = append(tp.Partitions, kmsg.NewTxnOffsetCommitRequestTopicPartition())
		r.Topics = append(r.Topics, tp)
		return r
	}},
	{name: "DescribeTransactions", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrDescribeTransactionsRequest()
		r.TransactionalIDs = []string{deniedTxn}
		return r
	}},
	{name: "ConsumerGroupHeartbeat", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrConsumerGroupHeartbeatRequest()
		r.Group, r.MemberID, r.MemberEpoch, r.RebalanceTimeoutMillis = deniedGroup, "m0000000000000000000000", 0, 10000
		r.SubscribedTopicNames = []string{deniedTopic}
		return r
	}},
	{name: "ConsumerGroupDescribe", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrConsumerGroupDescribeRequest()
		r.Groups = []string{deniedGroup}
		return r
	}},
	{name: "InitProducerId", build: func(v int16) kmsg.Request {
		r := kmsg.NewPtrInitProducerIDRequest()
		r.TransactionalID = kmsg.StringPtr(deniedTxn)
		r.TransactionTimeoutMillis = 60000
		return r
	}},
}

// TestDenyResponsesMatchBroker checks that ward's deny responses are the
// bytes a real broker's authorizer answers: the same request, at every
// version both the broker and kmsg speak, is sent to a Kafka 4.3 broker
// whose StandardAuthorizer denies the topic, group or transactional id,
// and through ward's parser with rules denying it.
func TestDenyResponsesMatchBroker(t *testing.T) {
	b := StartBroker(t, BrokerConfig{Authorizer: true, Topics: []string{deniedTopic, deniedTopic2}})
	// Before the ACLs: the topic's ID (requests from Fetch v13,
	// OffsetCommit and OffsetFetch v10 name it), learnt by ward too from a
	// Metadata answer it passes; and the group coordinator loaded, so
	// that group requests reach the authorizer.
	var cur atomic.Pointer[kfilter.Matcher]
	all, _ := kfilter.Compile(nil)
	cur.Store(all)
	p := listenProxy(t, idHQ)
	p.serve(b.Addr(), kfilter.NewParserFactory(kfilter.RuleSourceFunc(func(bool, uint16, uint32) (*kfilter.Matcher, bool) { return cur.Load(), true }), nil))
	md := kmsg.NewPtrMetadataRequest()
	md.SetVersion(12)
	for _, n := range []string{deniedTopic, deniedTopic2} {
		mdt := kmsg.NewMetadataRequestTopic()
		mdt.Topic = kmsg.StringPtr(n)
		md.Topics = append(md.Topics, mdt)
	}
	raw, err := rawRoundTrip(p.Addr(), md, 1)
	if err != nil {
		t.Fatal(err)
	}
	mdr := kmsg.NewPtrMetadataResponse()
	mdr.SetVersion(12)
	if err := mdr.ReadFrom(raw[5:]); err != nil || len(mdr.Topics) != 2 {
		t.Fatalf("metadata of %s, %s: %v %+v", deniedTopic, deniedTopic2, err, mdr)
	}
	for _, tp := range mdr.Topics {
		i := 0
		if *tp.Topic == deniedTopic2 {
			i = 1
		}
		deniedIDs[i] = tp.TopicID
	}
	deniedTopicID = deniedIDs[0]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for {
		of := kmsg.NewPtrOffsetFetchRequest()
		of.SetVersion(8)
		g := kmsg.NewOffsetFetchRequestGroup()
		g.Group = openGroup
		of.Groups = append(of.Groups, g)
		raw, err := rawRoundTrip(b.Addr(), of, 1)
		ofr := kmsg.NewPtrOffsetFetchResponse()
		ofr.SetVersion(8)
		if err == nil && ofr.ReadFrom(raw[5:]) == nil && len(ofr.Groups) == 1 && ofr.Groups[0].ErrorCode == 0 {
			break
		}
		fc := kmsg.NewPtrFindCoordinatorRequest()
		fc.SetVersion(4)
		fc.CoordinatorKeys = []string{openGroup}
		_, _ = rawRoundTrip(b.Addr(), fc, 1) // creates __consumer_offsets; the loop checks the outcome
		if ctx.Err() != nil {
			t.Fatalf("group coordinator of %s not ready: %v", openGroup, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	for _, acl := range []struct {
		typ  int8
		name string
	}{{ACLTopic, deniedTopic}, {ACLTopic, deniedTopic2}, {ACLGroup, deniedGroup}, {ACLTransactionalID, deniedTxn}} {
		if err := b.DenyACLs(acl.typ, acl.name); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until the ACLs apply (the authorizer learns them from the
	// metadata log).
	probe := kmsg.NewPtrMetadataRequest()
	probe.SetVersion(12)
	mt := kmsg.NewMetadataRequestTopic()
	mt.Topic = kmsg.StringPtr(deniedTopic)
	probe.Topics = append(probe.Topics, mt)
	for {
		raw, err := rawRoundTrip(b.Addr(), probe, 1)
		if err == nil {
			resp := kmsg.NewPtrMetadataResponse()
			resp.SetVersion(12)
			if resp.ReadFrom(raw[5:]) == nil && len(resp.Topics) == 1 && resp.Topics[0].ErrorCode == 29 {
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("the topic ACL never applied: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	deny, err := kfilter.Compile([]l7.KafkaRule{{APIKey: "apiversions"}})
	if err != nil {
		t.Fatal(err)
	}
	cur.Store(deny)

	// The versions the broker speaks.
	av := kmsg.NewPtrApiVersionsRequest()
	av.SetVersion(3)
	av.ClientSoftwareName, av.ClientSoftwareVersion = "ward", "1"
	raw, err = rawRoundTrip(b.Addr(), av, 1)
	if err != nil {
		t.Fatal(err)
	}
	avr := kmsg.NewPtrApiVersionsResponse()
	avr.SetVersion(3)
	if err := avr.ReadFrom(raw[4:]); err != nil {
		t.Fatal(err)
	}
	speaks := map[int16][2]int16{}
	for _, k := range avr.ApiKeys {
		speaks[k.ApiKey] = [2]int16{k.MinVersion, k.MaxVersion}
	}

	compared := 0
	for _, c := range denyCases {
		req := c.build(0)
		rng, ok := speaks[req.Key()]
		if !ok {
			t.Errorf("%s: the broker does not speak it", c.name)
			continue
		}
		for v := rng[0]; v <= min(rng[1], req.MaxVersion()); v++ {
			t.Run(fmt.Sprintf("%s/v%d", c.name, v), func(t *testing.T) {
				req := c.build(v)
				req.SetVersion(v)
				corr := int32(1000 + v)
				want, err := rawRoundTrip(b.Addr(), req, corr)
				got, werr := rawRoundTrip(p.Addr(), req, corr)
				if err != nil {
					// The broker refuses the version (Kafka 4 dropped
					// Produce v0-2 but still lists them): so must ward.
					if werr == nil {
						t.Errorf("the broker closed the connection (%v); ward answered %x", err, got)
					}
					return
				}
				if werr != nil {
					t.Fatalf("ward: %v", werr)
				}
				compared++
				if c.unordered {
					got, want = sortedProduce(t, v, got), sortedProduce(t, v, want)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("ward's deny differs from the broker's at byte %d of %d/%d\nward:   %x\nbroker: %x\nward:   %s\nbroker: %s",
						firstDiff(got, want), len(got), len(want), got, want, show(req, got), show(req, want))
				}
			})
		}
	}
	t.Logf("compared %d deny responses with the broker's", compared)
}

// sortedProduce re-encodes a Produce response frame with its topics and
// partitions sorted.
func sortedProduce(t *testing.T, v int16, frame []byte) []byte {
	t.Helper()
	resp := kmsg.NewPtrProduceResponse()
	resp.SetVersion(v)
	hdr := 4
	if resp.IsFlexible() {
		hdr = 5
	}
	if err := resp.ReadFrom(frame[hdr:]); err != nil {
		t.Fatalf("read produce response: %v", err)
	}
	slices.SortFunc(resp.Topics, func(a, b kmsg.ProduceResponseTopic) int {
		if c := strings.Compare(a.Topic, b.Topic); c != 0 {
			return c
		}
		return bytes.Compare(a.TopicID[:], b.TopicID[:]) // v13+: by ID
	})
	for i := range resp.Topics {
		slices.SortFunc(resp.Topics[i].Partitions, func(a, b kmsg.ProduceResponseTopicPartition) int { return int(a.Partition - b.Partition) })
	}
	return resp.AppendTo(append([]byte(nil), frame[:hdr]...))
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// show decodes a response frame for failure messages.
func show(req kmsg.Request, frame []byte) string {
	resp := req.ResponseKind()
	resp.SetVersion(req.GetVersion())
	body := frame[4:]
	if resp.IsFlexible() && req.Key() != 18 {
		body = body[1:]
	}
	if err := resp.ReadFrom(body); err != nil {
		return "undecodable: " + err.Error()
	}
	return fmt.Sprintf("%+v", resp)
}

// writeReadAll writes b on a new connection to addr and reads until the peer
// closes it.
func writeReadAll(addr string, b []byte) ([]byte, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second)) // a bound on a hang
	if _, err := c.Write(b); err != nil {
		return nil, err
	}
	return io.ReadAll(c)
}

// TestPipelinedBadFrameLikeBroker sends a valid request and a malformed
// frame behind it in one write, to a broker and through ward: both answer
// the valid request, then close the connection.
func TestPipelinedBadFrameLikeBroker(t *testing.T) {
	b := StartBroker(t, BrokerConfig{})
	all, _ := kfilter.Compile(nil)
	p := listenProxy(t, idHQ)
	p.serve(b.Addr(), kfilter.NewParserFactory(kfilter.RuleSourceFunc(func(bool, uint16, uint32) (*kfilter.Matcher, bool) { return all, true }), nil))

	req := kmsg.NewPtrApiVersionsRequest()
	req.SetVersion(3)
	req.ClientSoftwareName, req.ClientSoftwareVersion = "ward", "1"
	body := binary.BigEndian.AppendUint16(nil, uint16(req.Key()))
	body = binary.BigEndian.AppendUint16(body, 3)
	body = binary.BigEndian.AppendUint32(body, 7)
	body = binary.BigEndian.AppendUint16(body, 1)
	body = append(body, 'c', 0)
	body = req.AppendTo(body)
	in := append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
	in = append(in, 0, 0, 0, 10, 0x7f, 0x7f, 0, 0, 0, 1, 0xff, 0xff, 0, 0) // key 32639: no such API

	want, err := writeReadAll(b.Addr(), in)
	if err != nil {
		t.Fatalf("broker: %v", err)
	}
	got, err := writeReadAll(p.Addr(), in)
	if err != nil {
		t.Fatalf("ward: %v", err)
	}
	if len(want) < 8 || int32(binary.BigEndian.Uint32(want[4:])) != 7 {
		t.Fatalf("the broker did not answer the valid request: %x", want)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("through ward: %d bytes %x; the broker: %d bytes %x", len(got), got, len(want), want)
	}
}

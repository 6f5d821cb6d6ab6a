package kafka

import (
	"encoding/binary"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// parseDeny checks the deny response's framing and decodes its body with
// kmsg (an independent implementation of the schemas).
func parseDeny(t *testing.T, d *decoded, resp []byte) kmsg.Response {
	t.Helper()
	if int(binary.BigEndian.Uint32(resp)) != len(resp)-4 {
		t.Fatalf("size prefix %d; frame is %d", binary.BigEndian.Uint32(resp), len(resp)-4)
	}
	if corr := int32(binary.BigEndian.Uint32(resp[4:])); corr != d.Correlation {
		t.Fatalf("correlation id %d; want %d", corr, d.Correlation)
	}
	kr := kmsg.ResponseForKey(d.APIKey)
	kr.SetVersion(d.APIVersion)
	body := resp[8:]
	if kr.IsFlexible() && d.APIKey != keyApiVersions {
		body = body[1:]
	}
	if err := kr.ReadFrom(body); err != nil {
		t.Fatalf("kmsg cannot read the deny response: %v", err)
	}
	return kr
}

func TestDenyResponseEveryKeyVersion(t *testing.T) {
	n := 0
	for key, m := range requestSchemas {
		if m == nil || responseSchema(int16(key)) == nil {
			continue
		}
		req := kmsg.RequestForKey(int16(key))
		if req == nil {
			continue
		}
		for v := m.valid.lo; v <= m.valid.hi && v <= req.MaxVersion(); v++ {
			r := req
			if build, ok := topicRequests[int16(key)]; ok {
				r, _ = build(v)
			}
			r.SetVersion(v)
			dc := decoder{ids: resolver}
			d, err := dc.decodeRequest(frame(r, 42, "c"))
			if err != nil {
				t.Fatalf("%s v%d: %v", m.name, v, err)
			}
			resp, err := denyResponse(d, nil)
			if err != nil {
				t.Errorf("%s v%d: %v", m.name, v, err)
				continue
			}
			parseDeny(t, d, resp)
			n++
		}
	}
	if n < 300 {
		t.Errorf("built %d deny responses; want the whole protocol", n)
	}
}

func denyFor(t *testing.T, key, v int16) (*decoded, kmsg.Response) {
	t.Helper()
	r, _ := topicRequests[key](v)
	r.SetVersion(v)
	dc := decoder{ids: resolver}
	d, err := dc.decodeRequest(frame(r, 9, "c"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := denyResponse(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d, parseDeny(t, d, resp)
}

func TestDenyResponseContents(t *testing.T) {
	for _, v := range []int16{3, 7, 9, 12, 13} {
		_, kr := denyFor(t, keyProduce, v)
		pr := kr.(*kmsg.ProduceResponse)
		if len(pr.Topics) != 2 || len(pr.Topics[0].Partitions) != 1 || pr.Topics[0].Partitions[0].Partition != 3 ||
			pr.Topics[0].Partitions[0].ErrorCode != 29 {
			t.Errorf("Produce v%d deny = %+v; want 2 topics, partition 3 with error 29", v, pr.Topics)
		}
		if v < 13 && pr.Topics[1].Topic != "b" || v >= 13 && pr.Topics[1].TopicID != idA {
			t.Errorf("Produce v%d deny names topic %q/%x", v, pr.Topics[1].Topic, pr.Topics[1].TopicID)
		}
	}
	for _, v := range []int16{4, 11, 12, 13, 17} {
		_, kr := denyFor(t, keyFetch, v)
		fr := kr.(*kmsg.FetchResponse)
		if fr.ErrorCode != 0 || len(fr.Topics) == 0 || fr.Topics[0].Partitions[0].ErrorCode != 29 {
			t.Errorf("Fetch v%d deny = %+v", v, fr)
		}
	}
	for _, v := range []int16{1, 4, 9, 12, 13} {
		_, kr := denyFor(t, keyMetadata, v)
		mr := kr.(*kmsg.MetadataResponse)
		if len(mr.Topics) != 2 || mr.Topics[0].ErrorCode != 29 || *mr.Topics[0].Topic != "a" {
			t.Errorf("Metadata v%d deny = %+v", v, mr.Topics)
		}
	}
	for _, v := range []int16{7, 8, 9} {
		_, kr := denyFor(t, keyOffsetFetch, v)
		or := kr.(*kmsg.OffsetFetchResponse)
		if v >= 8 {
			if len(or.Groups) != 1 || or.Groups[0].Group != "g" || or.Groups[0].ErrorCode != 0 ||
				len(or.Groups[0].Topics) != 1 || or.Groups[0].Topics[0].Partitions[0].ErrorCode != 29 {
				t.Errorf("OffsetFetch v%d deny = %+v", v, or.Groups)
			}
		} else if len(or.Topics) != 1 || len(or.Topics[0].Partitions) != 2 || or.Topics[0].Partitions[1].ErrorCode != 29 {
			t.Errorf("OffsetFetch v%d deny = %+v", v, or.Topics)
		}
	}
	_, kr := denyFor(t, 20, 6)
	if dr := kr.(*kmsg.DeleteTopicsResponse); len(dr.Topics) != 2 || dr.Topics[0].ErrorCode != 29 {
		t.Errorf("DeleteTopics deny = %+v", dr.Topics)
	}
	_, kr = denyFor(t, keyConsumerGroupHeartbeat, 0)
	if cr := kr.(*kmsg.ConsumerGroupHeartbeatResponse); cr.ErrorCode != 30 {
		t.Errorf("ConsumerGroupHeartbeat deny error = %d; want 30", cr.ErrorCode)
	}
	_, kr = denyFor(t, 28, 3)
	if tr := kr.(*kmsg.TxnOffsetCommitResponse); len(tr.Topics) != 1 || tr.Topics[0].Topic != "a" {
		t.Errorf("TxnOffsetCommit deny = %+v", tr.Topics)
	}
}

func TestDenyResponseTopLevelCodes(t *testing.T) {
	tests := []struct {
		name string
		req  kmsg.Request
		v    int16
		code func(kmsg.Response) int16
		want int16
	}{
		{name: "join group", req: kmsg.NewPtrJoinGroupRequest(), v: 9, want: 30,
			code: func(r kmsg.Response) int16 { return r.(*kmsg.JoinGroupResponse).ErrorCode }},
		{name: "init producer id txn", req: &kmsg.InitProducerIDRequest{TransactionalID: kmsg.StringPtr("tx")}, v: 5, want: 53,
			code: func(r kmsg.Response) int16 { return r.(*kmsg.InitProducerIDResponse).ErrorCode }},
		{name: "init producer id", req: kmsg.NewPtrInitProducerIDRequest(), v: 5, want: 31,
			code: func(r kmsg.Response) int16 { return r.(*kmsg.InitProducerIDResponse).ErrorCode }},
		{name: "describe cluster", req: kmsg.NewPtrDescribeClusterRequest(), v: 1, want: 31,
			code: func(r kmsg.Response) int16 { return r.(*kmsg.DescribeClusterResponse).ErrorCode }},
		{name: "apiversions", req: kmsg.NewPtrApiVersionsRequest(), v: 3, want: 31,
			code: func(r kmsg.Response) int16 { return r.(*kmsg.ApiVersionsResponse).ErrorCode }},
		{name: "find coordinator v4", req: &kmsg.FindCoordinatorRequest{CoordinatorKeys: []string{"g1"}}, v: 4, want: 30,
			code: func(r kmsg.Response) int16 {
				c := r.(*kmsg.FindCoordinatorResponse).Coordinators
				if len(c) != 1 || c[0].Key != "g1" {
					return -1
				}
				return c[0].ErrorCode
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.req.SetVersion(tt.v)
			var dc decoder
			d, err := dc.decodeRequest(frame(tt.req, 5, "c"))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := denyResponse(d, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := tt.code(parseDeny(t, d, resp)); got != tt.want {
				t.Errorf("error code = %d; want %d", got, tt.want)
			}
		})
	}
}

func TestMetadataProbeSplice(t *testing.T) {
	for v := requestSchemas[keyMetadata].valid.lo; v <= requestSchemas[keyMetadata].valid.hi; v++ {
		req, _ := topicRequests[keyMetadata](v)
		req.SetVersion(v)
		dc := decoder{ids: resolver}
		d, err := dc.decodeRequest(frame(req, 77, "cli"))
		if err != nil {
			t.Fatal(err)
		}
		probe, err := metadataProbe(d)
		if err != nil {
			t.Fatalf("v%d: probe: %v", v, err)
		}
		var pc decoder
		pd, err := pc.decodeRequest(probe[4:])
		if err != nil || pd.Correlation != 77 || pd.ClientID != "cli" || len(pd.Topics) != 0 || (pd.AllTopics && v > 0) {
			t.Fatalf("v%d: probe decodes to %+v, %v; want no topic, same header", v, pd, err)
		}
		// The broker's answer to the probe: brokers, no topic.
		br := kmsg.NewPtrMetadataResponse()
		br.SetVersion(v)
		b := kmsg.NewMetadataResponseBroker()
		b.NodeID, b.Host, b.Port = 1, "127.0.0.1", 9092
		br.Brokers = append(br.Brokers, b)
		br.ClusterID = kmsg.StringPtr("cluster")
		br.ControllerID = 1
		body := binary.BigEndian.AppendUint32(nil, 77)
		if br.IsFlexible() {
			body = append(body, 0)
		}
		body = br.AppendTo(body)
		resp, err := spliceMetadataDeny(d.clone(), body)
		if err != nil {
			t.Fatalf("v%d: splice: %v", v, err)
		}
		mr := parseDeny(t, d, resp).(*kmsg.MetadataResponse)
		if len(mr.Brokers) != 1 || mr.Brokers[0].Port != 9092 || len(mr.Topics) != 2 || mr.Topics[1].ErrorCode != 29 || *mr.Topics[1].Topic != "b" {
			t.Errorf("v%d: spliced response = brokers %+v topics %+v", v, mr.Brokers, mr.Topics)
		}
	}
}

func TestConfigResourcesAreTopics(t *testing.T) {
	req := kmsg.NewPtrDescribeConfigsRequest()
	req.SetVersion(4)
	for _, rt := range []kmsg.ConfigResourceType{kmsg.ConfigResourceTypeTopic, kmsg.ConfigResourceTypeBroker} {
		res := kmsg.NewDescribeConfigsRequestResource()
		res.ResourceType, res.ResourceName = rt, "secret"
		if rt == kmsg.ConfigResourceTypeBroker {
			res.ResourceName = "1"
		}
		req.Resources = append(req.Resources, res)
	}
	var dc decoder
	d, err := dc.decodeRequest(frame(req, 3, "admin"))
	if err != nil || len(d.Topics) != 1 || d.Topics[0] != "secret" {
		t.Fatalf("decode = %v, %v; want the topic resource only", d.Topics, err)
	}
	resp, err := denyResponse(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	dr := parseDeny(t, d, resp).(*kmsg.DescribeConfigsResponse)
	if len(dr.Resources) != 1 || dr.Resources[0].ResourceName != "secret" || dr.Resources[0].ErrorCode != 29 ||
		dr.Resources[0].ResourceType != kmsg.ConfigResourceTypeTopic {
		t.Errorf("deny = %+v; want the topic resource with error 29", dr.Resources)
	}
	acl := kmsg.NewPtrCreateACLsRequest()
	acl.SetVersion(3)
	c := kmsg.NewCreateACLsRequestCreation()
	c.ResourceType, c.ResourceName = kmsg.ACLResourceTypeTopic, "ok"
	acl.Creations = append(acl.Creations, c)
	d, err = dc.decodeRequest(frame(acl, 3, "admin"))
	if err != nil || !d.AllTopics {
		t.Fatalf("CreateAcls on a topic: AllTopics = %v, %v; want true", d.AllTopics, err)
	}
}

// TestDenyFetchLikeBroker checks the Fetch deny of every version before
// flexible encoding ends with an empty record set (length 0, not null:
// sarama before v12 cannot read a null one) and reports the broker's
// invalid high watermark (-1), as a Kafka 4.3 broker answers
// (conformance/kafka TestDenyResponsesMatchBroker compares every byte).
func TestDenyFetchLikeBroker(t *testing.T) {
	for v := int16(4); v <= 11; v++ {
		var dc decoder
		r := kmsg.NewPtrFetchRequest()
		r.SetVersion(v)
		tp := kmsg.NewFetchRequestTopic()
		tp.Topic = "t"
		tp.Partitions = append(tp.Partitions, kmsg.NewFetchRequestTopicPartition())
		r.Topics = append(r.Topics, tp)
		d, err := dc.decodeRequest(frame(r, 3, "c"))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := denyResponse(d, nil)
		if err != nil {
			t.Fatal(err)
		}
		// One topic, one partition: the records length is the last field.
		if n := int32(binary.BigEndian.Uint32(resp[len(resp)-4:])); n != 0 {
			t.Errorf("v%d: records length %d; want 0 (empty)", v, n)
		}
		fr := parseDeny(t, d, resp).(*kmsg.FetchResponse)
		if p := fr.Topics[0].Partitions[0]; p.ErrorCode != errTopicAuthorization || p.HighWatermark != -1 {
			t.Errorf("v%d: partition error %d, high watermark %d; want 29, -1", v, p.ErrorCode, p.HighWatermark)
		}
	}
}

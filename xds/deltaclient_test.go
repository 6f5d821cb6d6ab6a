package xds

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/wardproxy/ward/xds/npds"
)

// deltaClient is a bare delta-xDS client of the policy type: the test
// decides every ACK and NACK.
type deltaClient struct {
	t  testing.TB
	st discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
}

func startDelta(t testing.TB) (*Server, *deltaClient) {
	t.Helper()
	dir, err := os.MkdirTemp("", "xds-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	srv, err := New(Config{Socket: filepath.Join(dir, "x.sock")})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	conn, err := grpc.NewClient("unix://"+srv.cfg.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); conn.Close(); <-done })
	c := &deltaClient{t: t, st: st}
	c.send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "n"}, TypeUrl: npds.NetworkPolicyType})
	c.ack(c.recv()) // the initial (empty) response
	return srv, c
}

func (c *deltaClient) send(r *discovery.DeltaDiscoveryRequest) {
	c.t.Helper()
	if err := c.st.Send(r); err != nil {
		c.t.Fatal(err)
	}
}

func (c *deltaClient) recv() *discovery.DeltaDiscoveryResponse {
	c.t.Helper()
	r, err := c.st.Recv()
	if err != nil {
		c.t.Fatal(err)
	}
	return r
}

func (c *deltaClient) ack(r *discovery.DeltaDiscoveryResponse) {
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()})
}

// nack rejects the named resources (as npdsclient does).
func (c *deltaClient) nack(r *discovery.DeltaDiscoveryResponse, rejected ...string) {
	br := &errdetails.BadRequest{}
	for _, n := range rejected {
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: n, Description: "bad " + n})
	}
	d, err := anypb.New(br)
	if err != nil {
		c.t.Fatal(err)
	}
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce(),
		ErrorDetail: &statuspb.Status{Code: 3, Message: "rejected", Details: []*anypb.Any{d}}})
}

func names(r *discovery.DeltaDiscoveryResponse) []string {
	var out []string
	for _, res := range r.GetResources() {
		out = append(out, res.GetName())
	}
	slices.Sort(out)
	return out
}

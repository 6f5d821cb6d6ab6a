package main

import (
	"context"
	"net"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	httpf "github.com/wardproxy/ward/filters/http"
)

// authz is the ext_authz arm's external service: a Go gRPC server doing
// the same match as ward's filter, with the same matcher.
type authz struct {
	authv3.UnimplementedAuthorizationServer
	m *httpf.Matcher
}

func (a *authz) Check(_ context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	h := req.GetAttributes().GetRequest().GetHttp()
	r := httpf.Request{Method: h.GetMethod(), Path: h.GetPath(), Host: h.GetHost(), Headers: httpf.MapHeaders(h.GetHeaders())}
	code := codes.PermissionDenied
	if a.m.Match(&r).Allowed {
		code = codes.OK
	}
	return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(code)}}, nil
}

// serveAuthz starts the service on a loopback port and returns the port.
func serveAuthz(ctx context.Context, m *httpf.Matcher) (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	s := grpc.NewServer()
	authv3.RegisterAuthorizationServer(s, &authz{m: m})
	go s.Serve(l) //nolint:errcheck
	go func() { <-ctx.Done(); s.Stop() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

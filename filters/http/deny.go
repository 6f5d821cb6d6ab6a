package http

import "strings"

// DenyBody is the body of the 403 answer: Cilium's default
// (HTTP403Message, "Access denied" plus the CRLF its filter appends).
const DenyBody = "Access denied\r\n"

// GRPCMessage is the grpc-message of a gRPC deny.
const GRPCMessage = "Access denied"

// grpcPermissionDenied is gRPC status code 7, PERMISSION_DENIED.
const grpcPermissionDenied = "7"

var (
	denyBody    = []byte(DenyBody)
	denyHeaders = [][2]string{{"content-type", "text/plain"}}
	grpcHeaders = [][2]string{
		{"content-type", "application/grpc"},
		{"grpc-status", grpcPermissionDenied},
		{"grpc-message", GRPCMessage},
	}
)

// IsGRPC reports whether a request with this content-type is gRPC
// (application/grpc, application/grpc+proto, application/grpc-web…).
func IsGRPC(contentType string) bool {
	return strings.HasPrefix(contentType, "application/grpc")
}

// DenyResponse returns the local reply that denies a request whose
// content-type is contentType. HTTP/1.1 and HTTP/2: 403, text/plain,
// DenyBody. gRPC: HTTP 200 with grpc-status 7 (PERMISSION_DENIED) and
// grpc-message in the headers and no body — a trailers-only response, so
// clients such as grpcurl report "Code: PermissionDenied". The returned
// slices are shared: callers must not modify them.
func DenyResponse(contentType string) (status int, headers [][2]string, body []byte) {
	if IsGRPC(contentType) {
		return 200, grpcHeaders, nil
	}
	return 403, denyHeaders, denyBody
}

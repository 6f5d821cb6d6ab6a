# HTTP and gRPC enforcement (filters/http, conformance/servers): protoc for
# the Cloud City stubs (go generate), curl/h2load for HTTP clients, and
# grpcurl as the real gRPC client of the conformance tests.
apt_install protobuf-compiler curl nghttp2-client

GRPCURL_VERSION=v1.9.4
if [[ ! -x "$ROOT/build/bin/grpcurl" ]] && ! command -v grpcurl >/dev/null 2>&1; then
	log "go install grpcurl@${GRPCURL_VERSION} (about a minute)"
	mkdir -p "$ROOT/build/bin"
	GOBIN="$ROOT/build/bin" go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@${GRPCURL_VERSION}"
fi

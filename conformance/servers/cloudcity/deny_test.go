package cloudcity

import (
	"context"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	httpf "github.com/wardproxy/ward/filters/http"
)

// denyServer answers every request with ward's deny response, as the
// Envoy filter does with a local reply (h2c, headers-only, end of stream).
func denyServer(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st, headers, body := httpf.DenyResponse(r.Header.Get("Content-Type"))
		for _, h := range headers {
			w.Header().Set(h[0], h[1])
		}
		w.WriteHeader(st)
		_, _ = w.Write(body)
	})}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return lis.Addr().String()
}

func TestDenyResponseIsPermissionDenied(t *testing.T) {
	addr := denyServer(t)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = NewDoorManagerClient(conn).SetAccessCode(ctx, &DoorAccessCodeRequest{DoorId: 1, AccessCode: 999})
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || st.Message() != httpf.GRPCMessage {
		t.Errorf("SetAccessCode through a deny = %v; want PermissionDenied %q", err, httpf.GRPCMessage)
	}
}

func TestDenyResponseWithGrpcurl(t *testing.T) {
	grpcurl := grpcurlPath(t)
	addr := denyServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, grpcurl, "-plaintext", "-import-path", ".", "-proto", "cloudcity.proto",
		"-d", `{"door_id": 1, "access_code": 999}`, addr, "cloudcity.DoorManager/SetAccessCode").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Code: PermissionDenied") || !strings.Contains(string(out), "Message: Access denied") {
		t.Errorf("grpcurl SetAccessCode through a deny = %v\n%s\nwant Code: PermissionDenied", err, out)
	}
}

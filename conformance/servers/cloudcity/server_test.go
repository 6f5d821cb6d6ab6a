package cloudcity

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/wardproxy/ward/internal/testenv"
)

// start serves a fresh DoorManager on 127.0.0.1:0 for the test's lifetime.
func start(t *testing.T) (string, *DoorManager) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, dm := NewServer()
	done := make(chan error, 1)
	go func() { done <- s.Serve(lis) }()
	t.Cleanup(func() {
		s.Stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return lis.Addr().String(), dm
}

func TestDoorManagerGoClient(t *testing.T) {
	addr, dm := start(t)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := NewDoorManagerClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	name, err := c.GetName(ctx, &DoorRequest{DoorId: 1})
	if err != nil || name.GetName() != "Spaceport Door #1" {
		t.Errorf("GetName(1) = %v, %v; want Spaceport Door #1", name, err)
	}
	loc, err := c.GetLocation(ctx, &DoorRequest{DoorId: 1})
	if err != nil || loc.GetLat() < 10.2 || loc.GetLong() < 68.8 {
		t.Errorf("GetLocation(1) = %v, %v; want lat 10.2222 long 68.8788", loc, err)
	}
	st, err := c.GetStatus(ctx, &DoorRequest{DoorId: 1})
	if err != nil || st.GetState() != DoorStatus_CLOSED {
		t.Errorf("GetStatus(1) = %v, %v; want CLOSED", st, err)
	}
	if r, err := c.RequestMaintenance(ctx, &DoorMaintRequest{DoorId: 1, MaintDescription: "hinge"}); err != nil || !r.GetSuccess() {
		t.Errorf("RequestMaintenance = %v, %v; want success", r, err)
	}
	if r, err := c.SetAccessCode(ctx, &DoorAccessCodeRequest{DoorId: 1, AccessCode: 999}); err != nil || !r.GetSuccess() {
		t.Errorf("SetAccessCode = %v, %v; want success", r, err)
	}
	if st, err := c.GetStatus(ctx, &DoorRequest{DoorId: 1}); err != nil || st.GetState() != DoorStatus_OPEN {
		t.Errorf("GetStatus after SetAccessCode = %v, %v; want OPEN", st, err)
	}
	d, _ := dm.Door(1)
	if d.AccessCode != 999 || len(d.Maint) != 1 || d.Maint[0] != "hinge" {
		t.Errorf("door 1 = %+v; want access code 999 and one maintenance request", d)
	}
	if _, err := c.GetName(ctx, &DoorRequest{DoorId: 42}); status.Code(err) != codes.NotFound {
		t.Errorf("GetName(42) error = %v; want NotFound", err)
	}
}

func TestServeStopsWithContext(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, lis) }()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve after cancel = %v; want nil", err)
	}
}

// grpcurlPath finds grpcurl in build/bin (setup installs it there) or PATH.
func grpcurlPath(t *testing.T) string {
	t.Helper()
	p := filepath.Join(testenv.Root(t), "build", "bin", "grpcurl")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return testenv.RequireCommand(t, "grpcurl")
}

func TestGrpcurl(t *testing.T) {
	grpcurl := grpcurlPath(t)
	addr, _ := start(t)
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, grpcurl, append([]string{"-plaintext"}, args...)...).CombinedOutput()
		return string(out), err
	}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{name: "list", args: []string{addr, "list"}, want: []string{"cloudcity.DoorManager", "grpc.reflection.v1.ServerReflection"}},
		{name: "describe", args: []string{addr, "describe", "cloudcity.DoorManager"}, want: []string{"rpc GetName ( .cloudcity.DoorRequest ) returns ( .cloudcity.DoorNameReply )", "rpc SetAccessCode"}},
		{name: "GetName", args: []string{"-d", `{"door_id": 1}`, addr, "cloudcity.DoorManager/GetName"}, want: []string{`"name": "Spaceport Door #1"`}},
		{name: "GetLocation", args: []string{"-d", `{"door_id": 1}`, addr, "cloudcity.DoorManager/GetLocation"}, want: []string{`"lat": 10.2222`}},
		{name: "RequestMaintenance", args: []string{"-d", `{"door_id": 1, "maint_description": "hinge"}`, addr, "cloudcity.DoorManager/RequestMaintenance"}, want: []string{`"success": true`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := run(tt.args...)
			if err != nil {
				t.Fatalf("grpcurl %v: %v\n%s", tt.args, err, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("grpcurl %v output lacks %q:\n%s", tt.args, w, out)
				}
			}
		})
	}
}

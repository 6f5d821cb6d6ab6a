// Package cloudcity is the Cloud City door manager of the seed's gRPC
// tutorial (service cloudcity.DoorManager, TCP 50051 there), a real
// grpc-go server used by ward's conformance tests and benchmarks. Server
// reflection is registered, so grpcurl needs no .proto. The door state is
// in memory and safe for concurrent use.
package cloudcity

import (
	"context"
	"fmt"
	"net"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
)

//go:generate sh -c "PATH=$(go env GOROOT)/bin:$PATH protoc --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --plugin=protoc-gen-go-grpc=$(go tool -n protoc-gen-go-grpc) --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative cloudcity.proto"

// Doors is the number of doors: ids 1..Doors exist.
const Doors = 3

// Door is one door's state.
type Door struct {
	Name       string
	Lat, Long  float32
	Status     DoorStatus
	AccessCode uint32
	Maint      []string
}

// DoorManager implements DoorManagerServer over an in-memory city.
type DoorManager struct {
	UnimplementedDoorManagerServer

	mu    sync.Mutex
	doors map[uint32]*Door
}

var _ DoorManagerServer = (*DoorManager)(nil)

// NewDoorManager returns the city as the tutorial shows it: door 1 is
// "Spaceport Door #1" at lat 10.2222, long 68.8788, closed.
func NewDoorManager() *DoorManager {
	dm := &DoorManager{doors: map[uint32]*Door{}}
	for i := uint32(1); i <= Doors; i++ {
		dm.doors[i] = &Door{
			Name:   fmt.Sprintf("Spaceport Door #%d", i),
			Lat:    10.2222 + float32(i-1),
			Long:   68.8788 + float32(i-1),
			Status: DoorStatus_CLOSED,
		}
	}
	return dm
}

func (dm *DoorManager) door(id uint32) (*Door, error) {
	d, ok := dm.doors[id]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no door %d", id)
	}
	return d, nil
}

// GetName returns the door's human-readable name.
func (dm *DoorManager) GetName(_ context.Context, r *DoorRequest) (*DoorNameReply, error) {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	d, err := dm.door(r.GetDoorId())
	if err != nil {
		return nil, err
	}
	return &DoorNameReply{Name: d.Name}, nil
}

// GetLocation returns where the door is.
func (dm *DoorManager) GetLocation(_ context.Context, r *DoorRequest) (*DoorLocationReply, error) {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	d, err := dm.door(r.GetDoorId())
	if err != nil {
		return nil, err
	}
	return &DoorLocationReply{Lat: d.Lat, Long: d.Long}, nil
}

// GetStatus says whether the door is open or closed.
func (dm *DoorManager) GetStatus(_ context.Context, r *DoorRequest) (*DoorStatusReply, error) {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	d, err := dm.door(r.GetDoorId())
	if err != nil {
		return nil, err
	}
	return &DoorStatusReply{State: d.Status}, nil
}

// RequestMaintenance files a maintenance request.
func (dm *DoorManager) RequestMaintenance(_ context.Context, r *DoorMaintRequest) (*DoorActionReply, error) {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	d, err := dm.door(r.GetDoorId())
	if err != nil {
		return nil, err
	}
	d.Maint = append(d.Maint, r.GetMaintDescription())
	return &DoorActionReply{Success: true}, nil
}

// SetAccessCode changes the door's access code — and, as R2-D2 found out,
// opens it.
func (dm *DoorManager) SetAccessCode(_ context.Context, r *DoorAccessCodeRequest) (*DoorActionReply, error) {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	d, err := dm.door(r.GetDoorId())
	if err != nil {
		return nil, err
	}
	d.AccessCode = r.GetAccessCode()
	d.Status = DoorStatus_OPEN
	return &DoorActionReply{Success: true}, nil
}

// Door returns a copy of door id's state, for tests.
func (dm *DoorManager) Door(id uint32) (Door, bool) {
	dm.mu.Lock()
	defer dm.mu.Unlock()
	d, ok := dm.doors[id]
	if !ok {
		return Door{}, false
	}
	c := *d
	c.Maint = append([]string(nil), d.Maint...)
	return c, true
}

// NewServer returns a gRPC server with a fresh DoorManager and server
// reflection registered, and the DoorManager for inspection.
func NewServer(opts ...grpc.ServerOption) (*grpc.Server, *DoorManager) {
	s := grpc.NewServer(opts...)
	dm := NewDoorManager()
	RegisterDoorManagerServer(s, dm)
	reflection.Register(s)
	return s, dm
}

// Serve serves a new DoorManager on lis until ctx is done, then stops
// gracefully. It returns nil after a stop through ctx.
func Serve(ctx context.Context, lis net.Listener) error {
	s, _ := NewServer()
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		s.GracefulStop()
		<-errc
		return nil
	}
}

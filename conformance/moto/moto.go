// Package moto runs moto in server mode — a real EC2-compatible API server
// (PyPI moto[server], installed by scripts/setup.d/85-moto.sh into
// .cache/moto) — on a free loopback port for the toGroups tests, and gives
// an EC2 client to populate it. Nothing talks to real AWS.
package moto

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/wardproxy/ward/internal/testenv"
)

// Region is the region the tests use.
const Region = "us-east-1"

// Server is a running moto server.
type Server struct {
	// Endpoint is its URL (http://127.0.0.1:PORT).
	Endpoint string
}

// Start runs moto_server until the test ends and sets the AWS credential
// environment variables the SDK's default chain reads (moto accepts any).
func Start(t *testing.T) *Server {
	t.Helper()
	bin := testenv.File(t, filepath.Join(".cache", "moto", "bin", "moto_server"), "run `make setup` (installs moto into .cache/moto)")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "-H", "127.0.0.1", "-p", fmt.Sprint(port))
	var out bytes.Buffer
	var mu sync.Mutex
	cmd.Stdout, cmd.Stderr = &lockedWriter{&out, &mu}, &lockedWriter{&out, &mu}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			mu.Lock()
			t.Logf("moto_server output:\n%s", out.String())
			mu.Unlock()
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("moto_server not listening on %s after 60s", addr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "testing")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "testing")
	t.Setenv("AWS_REGION", Region)
	// Keep the SDK away from the machine's own AWS files and IMDS.
	t.Setenv("AWS_CONFIG_FILE", os.DevNull)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	return &Server{Endpoint: "http://" + addr}
}

// EC2 is a client of the server.
func (s *Server) EC2() *ec2.Client {
	return ec2.New(ec2.Options{
		Region:       Region,
		BaseEndpoint: awssdk.String(s.Endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider("testing", "testing", ""),
	})
}

// Interface creates a network interface with the private IP ip in a new
// VPC and subnet holding it, in a new security group named name; it
// returns the group's and the interface's ids.
func (s *Server) Interface(ctx context.Context, t *testing.T, name, cidr, ip string) (sg, eni string) {
	t.Helper()
	c := s.EC2()
	vpc, err := c.CreateVpc(ctx, &ec2.CreateVpcInput{CidrBlock: awssdk.String(cidr)})
	if err != nil {
		t.Fatalf("CreateVpc: %v", err)
	}
	sub, err := c.CreateSubnet(ctx, &ec2.CreateSubnetInput{VpcId: vpc.Vpc.VpcId, CidrBlock: awssdk.String(cidr)})
	if err != nil {
		t.Fatalf("CreateSubnet: %v", err)
	}
	g, err := c.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{GroupName: awssdk.String(name), Description: awssdk.String(name), VpcId: vpc.Vpc.VpcId})
	if err != nil {
		t.Fatalf("CreateSecurityGroup: %v", err)
	}
	ni, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: sub.Subnet.SubnetId, Groups: []string{*g.GroupId}, PrivateIpAddress: awssdk.String(ip)})
	if err != nil {
		t.Fatalf("CreateNetworkInterface: %v", err)
	}
	return *g.GroupId, *ni.NetworkInterface.NetworkInterfaceId
}

type lockedWriter struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

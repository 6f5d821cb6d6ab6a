package datapath

import (
	"context"
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/wardproxy/ward/agent"
	"github.com/wardproxy/ward/conformance/moto"
	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/policy/groups/aws"
)

// TestToGroupsAWS is the seed's "Locking Down External Access Using AWS
// Metadata" through wardd, against moto (a real EC2-compatible API server
// the test populates): a policy allows egress to the network interfaces of
// a security group; wardd resolves it into a derivative policy with the
// interfaces' IPs, so the pod reaches the database outside the cluster
// whose interface is in the group; when the interface leaves the group the
// enforced CIDRs follow and the traffic is dropped.
func TestToGroupsAWS(t *testing.T) {
	srv := moto.Start(t)
	n := node.New(t,
		node.PodSpec{Name: "app", Labels: map[string]string{"app": "api"}},
		node.PodSpec{Name: "db", Labels: map[string]string{"app": "db"}, Unmanaged: true},
		node.PodSpec{Name: "other", Labels: map[string]string{"app": "other"}, Unmanaged: true})
	db := n.Pods["db"]
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("db")) })
	n.Serve(t, "db", ok, ":5432", ":5433", ":5434")
	n.Serve(t, "app", ok, ":80", ":81")
	ctx, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	sg, eni := srv.Interface(ctx, t, "database", netip.PrefixFrom(db.IP, 24).Masked().String(), db.IP.String())
	n.WritePolicy(t, "to-db.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-db}
spec:
  endpointSelector: {matchLabels: {app: api}}
  egress:
  - toGroups:
    - aws:
        securityGroupsIds: [`+sg+`]
    toPorts:
    - ports: [{port: "5432", protocol: TCP}]
  # The same group by name and region, on another port; and the group as
  # a source (fromGroups).
  - toGroups:
    - aws:
        securityGroupsNames: [database]
        region: `+moto.Region+`
    toPorts:
    - ports: [{port: "5433", protocol: TCP}]
  # 5434 is allowed to the address, but the group's deny wins.
  - toCIDR: [`+db.IP.String()+`/32]
    toPorts:
    - ports: [{port: "5434", protocol: TCP}]
  egressDeny:
  - toGroups:
    - aws:
        securityGroupsIds: [`+sg+`]
    toPorts:
    - ports: [{port: "5434", protocol: TCP}]
  ingress:
  - fromGroups:
    - aws:
        securityGroupsIds: [`+sg+`]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
  # 81 is open to the world, but not to the group (fromGroups deny).
  - fromEntities: [world]
    toPorts:
    - ports: [{port: "81", protocol: TCP}]
  ingressDeny:
  - fromGroups:
    - aws:
        securityGroupsIds: [`+sg+`]
    toPorts:
    - ports: [{port: "81", protocol: TCP}]
`)
	n.Config.ToGroups = &agent.ToGroupsConfig{AWS: &aws.Config{Region: moto.Region, Endpoint: srv.Endpoint}, Interval: "1s"}
	n.Start(t, 38700, 9717)

	curl := func() string { return n.Curl(ctx, "app", "http://"+db.IP.String()+":5432/") }
	node.Eventually(t, "the database in the security group to be reachable", func() bool { return curl() == "db" })
	if got := n.Curl(ctx, "app", "http://"+db.IP.String()+":5433/"); got != "db" {
		t.Errorf("the group by name and region on 5433 = %q; want db", got)
	}
	if got := n.Curl(ctx, "app", "http://"+db.IP.String()+":5434/"); got != "error" {
		t.Errorf("5434, allowed to the address but denied to the group (egressDeny toGroups) = %q; want dropped", got)
	}
	fromPod := func(pod, port string) string {
		out, err := n.Pods[pod].Run(ctx, "curl", "-s", "-m", "5", "http://"+n.Pods["app"].IP.String()+port+"/")
		if err != nil {
			return "error"
		}
		return out
	}
	if got := fromPod("db", ""); got != "db" {
		t.Errorf("from the group's interface to the app (fromGroups) = %q; want allowed", got)
	}
	if got := fromPod("other", ""); got != "error" {
		t.Errorf("from an address outside the group to the app = %q; want dropped", got)
	}
	if got := fromPod("other", ":81"); got != "db" {
		t.Errorf("from the world to 81 = %q; want allowed", got)
	}
	if got := fromPod("db", ":81"); got != "error" {
		t.Errorf("from the group to 81 (ingressDeny fromGroups) = %q; want dropped", got)
	}
	st := n.Agent.Status().ToGroups
	if len(st) != 1 || st[0].Derivative == "" || !slices.Contains(st[0].CIDRs, db.IP.String()+"/32") || st[0].Error != "" {
		t.Errorf("status toGroups %+v: want the derivative with %s/32", st, db.IP)
	}
	// The interface leaves the group: the derivative follows.
	other, err := srv.EC2().CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{GroupName: awssdk.String("other"), Description: awssdk.String("other"),
		VpcId: vpcOf(ctx, t, srv, eni)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.EC2().ModifyNetworkInterfaceAttribute(ctx, &ec2.ModifyNetworkInterfaceAttributeInput{NetworkInterfaceId: awssdk.String(eni), Groups: []string{*other.GroupId}}); err != nil {
		t.Fatal(err)
	}
	node.Eventually(t, "the database to be dropped once its interface left the group", func() bool { return curl() == "error" })
}

func vpcOf(ctx context.Context, t *testing.T, srv *moto.Server, eni string) *string {
	t.Helper()
	out, err := srv.EC2().DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{eni}})
	if err != nil || len(out.NetworkInterfaces) != 1 {
		t.Fatalf("DescribeNetworkInterfaces: %v", err)
	}
	return out.NetworkInterfaces[0].VpcId
}

package aws_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/wardproxy/ward/conformance/moto"
	"github.com/wardproxy/ward/policy"
	"github.com/wardproxy/ward/policy/groups/aws"
)

// TestProviderAgainstMoto: the provider against a real EC2-compatible API
// (moto): security groups by id and by name select their interfaces'
// private IPs, tags select instances' IPs, and a change of membership is
// seen on the next call.
func TestProviderAgainstMoto(t *testing.T) {
	srv := moto.Start(t)
	ctx := context.Background()
	sg, eni := srv.Interface(ctx, t, "db", "10.50.0.0/24", "10.50.0.10")
	c := srv.EC2()
	p, err := aws.New(ctx, aws.Config{Region: moto.Region, Endpoint: srv.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	addrs := func(g policy.AWSGroup) []string {
		t.Helper()
		a, err := p.Addrs(ctx, policy.Groups{AWS: &g})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, x := range a {
			out = append(out, x.String())
		}
		return out
	}
	if got := addrs(policy.AWSGroup{SecurityGroupsIds: []string{sg}}); !slices.Equal(got, []string{"10.50.0.10"}) {
		t.Errorf("by id: %v", got)
	}
	if got := addrs(policy.AWSGroup{SecurityGroupsNames: []string{"db"}}); !slices.Equal(got, []string{"10.50.0.10"}) {
		t.Errorf("by name: %v", got)
	}
	// A second interface joins the group.
	sub, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{eni}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: sub.NetworkInterfaces[0].SubnetId, Groups: []string{sg}, PrivateIpAddress: awssdk.String("10.50.0.11")}); err != nil {
		t.Fatal(err)
	}
	if got := addrs(policy.AWSGroup{SecurityGroupsIds: []string{sg}}); !slices.Equal(got, []string{"10.50.0.10", "10.50.0.11"}) {
		t.Errorf("after a join: %v", got)
	}
	// Instances by tag.
	run, err := c.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: awssdk.String("ami-12c6146b"), MinCount: awssdk.Int32(1), MaxCount: awssdk.Int32(1),
		SubnetId:          sub.NetworkInterfaces[0].SubnetId,
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: []ec2types.Tag{{Key: awssdk.String("role"), Value: awssdk.String("batch")}}}}})
	if err != nil {
		t.Fatal(err)
	}
	ip := awssdk.ToString(run.Instances[0].PrivateIpAddress)
	if _, err := netip.ParseAddr(ip); err != nil {
		t.Fatalf("instance IP %q", ip)
	}
	if got := addrs(policy.AWSGroup{Labels: map[string]string{"role": "batch"}}); !slices.Contains(got, ip) {
		t.Errorf("by tag: %v, want %s among them", got, ip)
	}
	if got := addrs(policy.AWSGroup{Labels: map[string]string{"role": "none"}}); len(got) != 0 {
		t.Errorf("unmatched tag: %v", got)
	}
}

package attack

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/node"
	"github.com/wardproxy/ward/internal/testenv"
)

// memcacheAttackPolicy: the a-wing may set and get its own key and read
// (meta get) keys starting with "a", meta-set its own key; the x-wing may
// only get and read stats.
const memcacheAttackPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: memcached}
spec:
  endpointSelector: {matchLabels: {app: memcd-server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a-wing}}]
    toPorts:
    - ports: [{port: "11211", protocol: TCP}]
      rules:
        l7proto: memcache
        l7:
        - command: set
          keyExact: awing
        - command: get
          keyExact: awing
        - command: mg
          keyPrefix: a
        - command: ms
          keyExact: awing
  - fromEndpoints: [{matchLabels: {app: x-wing}}]
    toPorts:
    - ports: [{port: "11211", protocol: TCP}]
      rules:
        l7proto: memcache
        l7:
        - command: get
        - command: stats
`

// TestAttackMemcache: a client speaking memcached to a real memcached
// through wardd's generic L7 parser must not get a request the policy
// denies to the server by framing it so the parser and the server read
// the bytes differently: a storage line memcached refuses without reading
// its data block (bad flags, a length past int32, extra tokens, a tab the
// server does not split on) whose data block holds a denied command, a
// binary packet on a connection memcached already reads as text, a meta
// command's base64 key (flag b), a command name in capitals. The denied deletes must not reach the
// server (the secrets stay), the base64 key's value must not come back,
// and the answers of a pipelined mix come in order.
func TestAttackMemcache(t *testing.T) {
	testenv.RequireCommand(t, "memcached")
	n := node.New(t,
		node.PodSpec{Name: "memcd", Labels: map[string]string{"app": "memcd-server"}},
		node.PodSpec{Name: "awing", Labels: map[string]string{"app": "a-wing"}},
		node.PodSpec{Name: "xwing", Labels: map[string]string{"app": "x-wing"}})
	srv := n.Pods["memcd"]
	ctx, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	defer stop()
	// memcached also listens on the pod's loopback: the test's own view of
	// the store, not through the proxy.
	mc := srv.Command(ctx, "memcached", "-u", "root", "-l", srv.IP.String()+",127.0.0.1", "-p", "11211", "-U", "0")
	if err := mc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mc.Process.Kill(); mc.Wait() })
	n.WritePolicy(t, "memcached.yaml", memcacheAttackPolicy)
	n.Start(t, 39500, 9730)

	// direct runs text commands on the server's loopback (no policy).
	direct := func(cmds string) string {
		t.Helper()
		var c net.Conn
		node.Eventually(t, "memcached on the pod's loopback", func() bool {
			var err error
			c, err = srv.Dial(ctx, "tcp", "127.0.0.1:11211")
			return err == nil
		})
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		io.WriteString(c, cmds+"quit\r\n")
		b, _ := io.ReadAll(c)
		return string(b)
	}
	secrets := []string{"secret1", "secret2", "secret3", "secret4", "secret5", "secret6", "secret7", "secret8", "hidden"}
	var seed strings.Builder
	for _, k := range secrets {
		fmt.Fprintf(&seed, "set %s 0 0 9\r\nTOPSECRET\r\n", k)
	}
	seed.WriteString("set awing 0 0 5\r\nhello\r\n")
	if out := direct(seed.String()); strings.Count(out, "STORED") != len(secrets)+1 {
		t.Fatalf("seeding the store: %q", out)
	}
	addr := srv.IP.String() + ":11211"
	node.Eventually(t, "the a-wing's get through the proxy", func() bool {
		c, err := n.Pods["awing"].Dial(ctx, "tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "get awing\r\n")
		line, _ := bufio.NewReader(c).ReadString('\n')
		return line == "VALUE awing 0 5\r\n"
	})

	// send writes payload from pod and reads the answers until the
	// count-th END (each payload ends with an allowed get).
	send := func(pod string, payload []byte, ends int) string {
		t.Helper()
		c, err := n.Pods[pod].Dial(ctx, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := c.Write(payload); err != nil {
			t.Fatalf("write: %v", err)
		}
		var got []byte
		buf := make([]byte, 4096)
		for bytes.Count(got, []byte("END\r\n")) < ends {
			k, err := c.Read(buf)
			got = append(got, buf[:k]...)
			if err != nil {
				t.Errorf("%s: answers %q: %v", pod, got, err)
				break
			}
		}
		return string(got)
	}
	const value = "VALUE awing 0 5\r\nhello\r\nEND\r\n"
	binaryGet := func(key string) []byte { return binaryPacket(0x00, key, "") }
	cases := []struct {
		name, pod string
		payload   []byte
		ends      int
		want      string // the exact answers; "" not checked
	}{{
		name:    "denied set's data block holding an allowed get",
		pod:     "xwing",
		payload: []byte("set awing 0 0 11\r\nget awing\r\n\r\nget awing\r\n"),
		ends:    1,
		want:    "CLIENT_ERROR access denied\r\n" + value,
	}, {
		name:    "pipelined allowed and denied in order",
		pod:     "awing",
		payload: []byte("get awing\r\nset xwing 0 0 1\r\nx\r\nget secret1\r\nget awing\r\n"),
		ends:    2,
		want:    value + "CLIENT_ERROR access denied\r\nCLIENT_ERROR access denied\r\n" + value,
	}, {
		name:    "allowed set with bad flags, data block a denied delete",
		pod:     "awing",
		payload: []byte("set awing x 0 14\r\ndelete secret1\r\n\r\nget awing\r\n"),
		ends:    1,
	}, {
		name:    "allowed set with a length past int32",
		pod:     "awing",
		payload: []byte("set awing 0 0 2147483648\r\ndelete secret2\r\nget awing\r\n"),
		ends:    1,
	}, {
		name: "allowed set with a tab memcached does not split on",
		pod:  "awing",
		// memcached: exptime "0\t99", 15 bytes; a parser splitting on
		// tabs: 99 bytes.
		payload: []byte("set awing 0 0\t99 15\r\n" + strings.Repeat("a", 15) + "\r\n" + "delete secret3\r\n" +
			strings.Repeat("x", 99+2-17-16-2) + "\r\nget awing\r\n"),
		ends: 1,
	}, {
		name:    "binary get on a text connection, key holding a denied delete",
		pod:     "xwing",
		payload: append(append([]byte("get awing\r\n"), binaryGet("\r\ndelete secret4\r\n")...), "get awing\r\n"...),
		ends:    2,
	}, {
		name:    "extra tokens on an allowed set",
		pod:     "awing",
		payload: []byte("set awing 0 0 14 noreply x\r\ndelete secret5\r\n\r\nget awing\r\n"),
		ends:    1,
	}, {
		name:    "allowed set in capitals (memcached: an unknown command)",
		pod:     "awing",
		payload: []byte("SET awing 0 0 14\r\ndelete secret6\r\n\r\nget awing\r\n"),
		ends:    1,
	}, {
		name:    "allowed meta set with more flags than memcached takes",
		pod:     "awing",
		payload: []byte("ms awing 14" + strings.Repeat(" T0", 22) + "\r\ndelete secret7\r\n\r\nget awing\r\n"),
		ends:    1,
	}, {
		name:    "meta get of a base64 key (flag b) the prefix rule does not allow",
		pod:     "awing",
		payload: []byte("mg aGlkZGVu b v\r\nget awing\r\n"), // aGlkZGVu: "hidden"
		ends:    1,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := send(tc.pod, tc.payload, tc.ends)
			if tc.want != "" && got != tc.want {
				t.Errorf("answers %q; want %q", got, tc.want)
			}
			if strings.Contains(got, "TOPSECRET") || strings.Contains(got, "DELETED") {
				t.Errorf("answers %q: a denied request reached memcached", got)
			}
		})
	}
	// Binary: memcached reads only a Stat request's key; a Delete in the
	// body past it must not reach memcached (the connection is closed).
	t.Run("binary stats whose body holds a denied delete", func(t *testing.T) {
		c, err := n.Pods["xwing"].Dial(ctx, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		del := binaryPacket(0x04, "secret8", "")
		noop := binaryPacket(0x0a, "", "")
		if _, err := c.Write(append(binaryPacket(0x10, "items", string(del)), noop...)); err != nil {
			t.Fatal(err)
		}
		io.ReadAll(c) // until memcached or the proxy closes
	})

	var check strings.Builder
	for _, k := range secrets {
		fmt.Fprintf(&check, "get %s\r\n", k)
	}
	out := direct(check.String())
	for _, k := range secrets {
		if !strings.Contains(out, "VALUE "+k+" 0 9\r\nTOPSECRET\r\n") {
			t.Errorf("%s is gone from the store (%q): a smuggled delete reached memcached", k, out)
		}
	}
	if out := direct("get awing\r\n"); out != value {
		t.Errorf("awing = %q; want %q (a set the parser refused or denied reached memcached)", out, value)
	}
}

// binaryPacket is a memcached binary request: opcode, key and a body past
// the key (no extras).
func binaryPacket(op byte, key, rest string) []byte {
	h := make([]byte, 24, 24+len(key)+len(rest))
	h[0], h[1] = 0x80, op
	binary.BigEndian.PutUint16(h[2:4], uint16(len(key)))
	binary.BigEndian.PutUint32(h[8:12], uint32(len(key)+len(rest)))
	return append(append(h, key...), rest...)
}

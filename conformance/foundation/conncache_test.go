package foundation_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/wardproxy/ward/conformance/stack"
	"github.com/wardproxy/ward/proxylib/testfilters"
)

// TestHTTPConnAddrsPerConnection: the binding reads a connection's
// addresses from Envoy once and serves its later requests from a cache by
// connection id (proxylib/abi connCache); requests interleaved over three
// keep-alive connections each see their own connection's remote address
// and id, the same id for every request of a connection.
func TestHTTPConnAddrsPerConnection(t *testing.T) {
	s := stack.Start(t, stack.Options{})
	up := newUpstream(t)
	port := stack.FreePort(t)
	res := upstreamCluster(t, "up", up.Server)
	res.Listeners = []typesResource{httpListener(t, "h", port, "up", testfilters.Inspect)}
	s.PushEnvoy(t, res)
	addr := "127.0.0.1:" + itoa(port)
	if code, body, _ := get(t, "http://"+addr+"/ready", nil); code != 299 {
		t.Fatalf("inspect listener: %d %q", code, body)
	}

	type conn struct {
		c  net.Conn
		r  *bufio.Reader
		id uint64
	}
	var conns []*conn
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, &conn{c: c, r: bufio.NewReader(c)})
	}
	ids := map[uint64]bool{}
	for round := range 3 {
		for i, c := range conns {
			c.c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(c.c, "GET /c HTTP/1.1\r\nHost: "+addr+"\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(c.r, nil)
			if err != nil {
				t.Fatalf("connection %d round %d: %v", i, round, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var seen struct {
				Conn struct {
					Remote, Local string
					ID            uint64
				}
			}
			if err := json.Unmarshal(b, &seen); err != nil {
				t.Fatalf("inspect body %q: %v", b, err)
			}
			if want := c.c.LocalAddr().String(); seen.Conn.Remote != want || seen.Conn.Local != addr {
				t.Errorf("connection %d round %d: addresses %+v; want remote %s local %s", i, round, seen.Conn, want, addr)
			}
			switch {
			case round == 0:
				if ids[seen.Conn.ID] {
					t.Errorf("connection %d: id %d already seen on another connection", i, seen.Conn.ID)
				}
				ids[seen.Conn.ID], c.id = true, seen.Conn.ID
			case seen.Conn.ID != c.id:
				t.Errorf("connection %d round %d: id %d; want %d as before", i, round, seen.Conn.ID, c.id)
			}
		}
	}
}

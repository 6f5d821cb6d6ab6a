package memcache

import (
	"strings"
	"testing"

	"github.com/wardproxy/ward/policy/l7"
)

// TestFramingAsMemcached: the parser frames a text request exactly as
// memcached 1.6 does, so no bytes it passes as a data block are commands
// to memcached (conformance/attack TestAttackMemcache runs the same
// requests against a real memcached through wardd). A storage line
// memcached refuses without reading its data block (another token count,
// numbers it cannot read, a tab it does not split on, a command name in
// capitals) is dropped alone and its data block is read as the commands
// memcached would take it for; a line ends at a NUL (memcached's strlen);
// a 0x80 on a text connection is a text line; a meta command's base64
// key (flag b) is decoded before the rules see it.
func TestFramingAsMemcached(t *testing.T) {
	rules := []l7.GenericRule{{"command": "set", "keyPrefix": "aw"}, {"command": "get", "keyExact": "awing"}, {"command": "mg", "keyPrefix": "a"}, {"command": "ms", "keyExact": "awing"}}
	for _, tc := range []struct {
		name, req, toServer string // toServer: an empty line is passed (memcached answers ERROR)
	}{
		{"bad flags", "set awing x 0 14\r\ndelete secret1\r\n\r\n", "\r\n"},
		{"negative flags", "set awing -1 0 14\r\ndelete secret1\r\n\r\n", "\r\n"},
		{"length past int32", "set awing 0 0 2147483648\r\ndelete secret1\r\n", ""},
		{"length with a sign", "set awing 0 0 +14\r\ndelete secret1\r\n\r\n", "\r\n"},
		{"tab between tokens", "set awing 0 0\t99 15\r\naaaaaaaaaaaaaaa\r\ndelete secret1\r\n", ""},
		{"extra tokens", "set awing 0 0 14 noreply x\r\ndelete secret1\r\n\r\n", "\r\n"},
		{"capitals", "SET awing 0 0 14\r\ndelete secret1\r\n\r\n", "\r\n"},
		{"NUL in the key", "set aw\x00ing 0 0 14\r\ndelete secret1\r\n\r\n", "\r\n"},
		{"two CRs", "get awing\r\r\n", ""},
		{"binary get on a text connection", "get awing\r\n" + string(binReq(0x00, 0, "awing", "\r\ndelete secret1\r\n")), "get awing\r\n"},
		{"meta set with more flags than memcached takes", "ms awing 14" + strings.Repeat(" T0", 22) + "\r\ndelete secret1\r\n\r\n", "\r\n"},
		{"base64 meta key", "mg aGlkZGVu b v\r\n", ""},
		{"base64 meta key allowed", "mg YXdpbmc= b v\r\n", "mg YXdpbmc= b v\r\n"}, // awing
		{"valid set", "set awing 0 -1 5 noreply\r\nhello\r\n", "set awing 0 -1 5 noreply\r\nhello\r\n"},
		{"valid cas", "cas awing 1 0 5 77\r\nhello\r\n", ""}, // cas is not allowed: dropped with its data
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, o, _ := newConn(t, rules...)
			s.OnData(false, false, [][]byte{[]byte(tc.req)})
			if string(o.toServer) != tc.toServer || strings.Contains(string(o.toServer), "delete") {
				t.Errorf("to server %q; want %q", o.toServer, tc.toServer)
			}
		})
	}
}

// TestTextOnBinaryConnectionCloses: memcached closes a binary connection
// on a request without the magic byte; so does the parser (it never
// passes a text command memcached would read differently).
func TestTextOnBinaryConnectionCloses(t *testing.T) {
	s, o, _ := newConn(t, awing...)
	get := binReq(0x00, 1, "awing", "")
	s.OnData(false, false, [][]byte{append(append([]byte{}, get...), "get xwing\r\n"...)})
	if string(o.toServer) != string(get) || o.closed == "" {
		t.Errorf("to server %q, closed %q; want the binary get alone and the connection closed", o.toServer, o.closed)
	}
}

// TestBinaryStatBodyCloses: memcached reads only a Stat request's key, so
// a body past it would be the next request to memcached (a Delete hidden
// in an allowed stats): the connection is closed instead.
func TestBinaryStatBodyCloses(t *testing.T) {
	s, o, _ := newConn(t, l7.GenericRule{"command": "stats"})
	stat := binReq(0x10, 1, "items", string(binReq(0x04, 2, "secret", "")))
	s.OnData(false, false, [][]byte{stat})
	if len(o.toServer) != 0 || o.closed == "" {
		t.Errorf("to server %q, closed %q; want nothing and the connection closed", o.toServer, o.closed)
	}
	s, o, _ = newConn(t, l7.GenericRule{"command": "stats"})
	stat = binReq(0x10, 1, "items", "")
	s.OnData(false, false, [][]byte{stat})
	if string(o.toServer) != string(stat) || o.closed != "" {
		t.Errorf("to server %q, closed %q; want the stats request", o.toServer, o.closed)
	}
}

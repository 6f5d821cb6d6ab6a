package r2d2

import (
	"testing"

	"github.com/wardproxy/ward/policy/l7"
	"github.com/wardproxy/ward/proxylib"
)

type out struct{ toServer, toClient string }

func (o *out) End(bool) {}
func (o *out) Forward(reply bool, b []byte) {
	if reply {
		o.toClient += string(b)
	} else {
		o.toServer += string(b)
	}
}
func (o *out) Close(string) {}

type rs struct{ m *Matcher }

func (r rs) Rules(bool, uint16, uint32) (*Matcher, bool) { return r.m, true }

func TestParser(t *testing.T) {
	m, err := Compile([]l7.GenericRule{{"cmd": "READ", "file": "^public/"}, {"cmd": "halt"}})
	if err != nil {
		t.Fatal(err)
	}
	o := &out{}
	s := proxylib.NewStream(NewParserFactory(rs{m}, nil), o, &proxylib.ConnInfo{Ingress: true})
	s.OnData(false, false, [][]byte{[]byte("READ public/a\r\nWRITE public/a\r\nREAD secret\r\nHALT\r\nBOGUS x y\r\n")})
	if o.toServer != "READ public/a\r\nHALT\r\n" {
		t.Errorf("to server %q", o.toServer)
	}
	s.OnData(true, false, [][]byte{[]byte("OK\r\n")})
	s.OnData(true, false, [][]byte{[]byte("OK\r\n")})
	if want := "OK\r\nERROR\r\nERROR\r\nOK\r\nERROR\r\n"; o.toClient != want {
		t.Errorf("to client %q, want %q", o.toClient, want)
	}
	if _, err := Compile([]l7.GenericRule{{"file": "("}}); err == nil {
		t.Error("bad regex compiled")
	}
}

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

// TestMatcherAnd: egress rules And a local destination's ingress rules
// allow a request only when both do; nil (allow-all) is the identity.
func TestMatcherAnd(t *testing.T) {
	egress, err := Compile([]l7.GenericRule{{"cmd": "READ"}, {"cmd": "WRITE"}})
	if err != nil {
		t.Fatal(err)
	}
	ingress, err := Compile([]l7.GenericRule{{"cmd": "READ", "file": "^public/"}})
	if err != nil {
		t.Fatal(err)
	}
	both := egress.And(ingress)
	for _, c := range []struct {
		cmd, file string
		want      bool
	}{{"READ", "public/a", true}, {"READ", "secret", false}, {"WRITE", "public/a", false}, {"HALT", "", false}} {
		if got := both.Allows(c.cmd, c.file); got != c.want {
			t.Errorf("%s %s: Allows = %v, want %v", c.cmd, c.file, got, c.want)
		}
	}
	if !egress.Allows("WRITE", "public/a") {
		t.Error("And changed its receiver")
	}
	var all *Matcher
	if all.And(ingress) != ingress || egress.And(nil) != egress {
		t.Error("And with allow-all (nil) is not the other matcher")
	}
}

type auditRS struct{ rs }

func (auditRS) Audit() bool { return true }

// TestAuditMode: in audit mode a well-formed request the policy denies
// passes; a malformed one is still answered ERROR.
func TestAuditMode(t *testing.T) {
	m, err := Compile([]l7.GenericRule{{"cmd": "READ", "file": "^public/"}})
	if err != nil {
		t.Fatal(err)
	}
	o := &out{}
	s := proxylib.NewStream(NewParserFactory(auditRS{rs{m}}, nil), o, &proxylib.ConnInfo{Ingress: true})
	s.OnData(false, false, [][]byte{[]byte("READ public/a\r\nWRITE secret\r\nBOGUS x y\r\n")})
	if o.toServer != "READ public/a\r\nWRITE secret\r\n" {
		t.Errorf("to server %q", o.toServer)
	}
}

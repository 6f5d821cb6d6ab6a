package flow

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendJSON appends r's JSON form — what encoding/json produces for a
// Record (same names, same omitempty fields; json.Unmarshal reads it back
// to an equal Record) — without reflection: the shipper encodes every
// record of Envoy's filters, on Envoy's CPU.
func (r *Record) AppendJSON(b []byte) []byte {
	b = append(b, `{"time":"`...)
	b = r.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if r.Direction != "" {
		b = appendKey(b, "direction")
		b = appendString(b, string(r.Direction))
	}
	b = appendKey(b, "verdict")
	b = appendString(b, string(r.Verdict))
	if r.Reason != "" {
		b = appendKey(b, "reason")
		b = appendString(b, r.Reason)
	}
	b = appendKey(b, "source")
	b = r.Source.appendJSON(b)
	b = appendKey(b, "destination")
	b = r.Destination.appendJSON(b)
	if r.Proto != "" {
		b = appendKey(b, "proto")
		b = appendString(b, r.Proto)
	}
	if h := r.HTTP; h != nil {
		b = appendKey(b, "http")
		b = append(b, '{')
		first := true
		b = appendOptString(b, &first, "method", h.Method)
		b = appendOptString(b, &first, "host", h.Host)
		b = appendOptString(b, &first, "path", h.Path)
		b = appendOptString(b, &first, "protocol", h.Protocol)
		if h.Status != 0 {
			b = appendField(b, &first, "status")
			b = strconv.AppendInt(b, int64(h.Status), 10)
		}
		b = appendField(b, &first, "rule")
		b = strconv.AppendInt(b, int64(h.Rule), 10)
		b = append(b, '}')
	}
	if k := r.Kafka; k != nil {
		b = appendKey(b, "kafka")
		b = append(b, `{"apiKey":`...)
		b = strconv.AppendInt(b, int64(k.APIKey), 10)
		first := false
		b = appendOptString(b, &first, "apiKeyName", k.APIKeyName)
		b = append(b, `,"apiVersion":`...)
		b = strconv.AppendInt(b, int64(k.APIVersion), 10)
		b = append(b, `,"correlationID":`...)
		b = strconv.AppendInt(b, int64(k.CorrelationID), 10)
		b = appendOptString(b, &first, "clientID", k.ClientID)
		b = appendOptStrings(b, &first, "topics", k.Topics)
		if k.ErrorCode != 0 {
			b = appendField(b, &first, "errorCode")
			b = strconv.AppendInt(b, int64(k.ErrorCode), 10)
		}
		b = append(b, '}')
	}
	if d := r.DNS; d != nil {
		b = appendKey(b, "dns")
		b = append(b, `{"query":`...)
		b = appendString(b, d.Query)
		first := false
		b = appendOptString(b, &first, "qtype", d.QType)
		b = appendOptString(b, &first, "rcode", d.RCode)
		b = appendOptStrings(b, &first, "ips", d.IPs)
		if d.TTL != 0 {
			b = appendField(b, &first, "ttl")
			b = strconv.AppendUint(b, uint64(d.TTL), 10)
		}
		b = append(b, '}')
	}
	if t := r.TLS; t != nil {
		b = appendKey(b, "tls")
		b = append(b, '{')
		first := true
		b = appendOptString(b, &first, "sni", t.SNI)
		if t.Intercepted {
			b = appendField(b, &first, "intercepted")
			b = append(b, "true"...)
		}
		b = append(b, '}')
	}
	if l := r.L4; l != nil {
		b = appendKey(b, "l4")
		b = append(b, `{"protocol":`...)
		b = appendString(b, l.Protocol)
		b = append(b, '}')
	}
	return append(b, '}')
}

func (e *Endpoint) appendJSON(b []byte) []byte {
	b = append(b, '{')
	first := true
	if e.Identity != 0 {
		b = appendField(b, &first, "identity")
		b = strconv.AppendUint(b, uint64(e.Identity), 10)
	}
	b = appendOptStrings(b, &first, "labels", e.Labels)
	b = appendOptString(b, &first, "ip", e.IP)
	if e.Port != 0 {
		b = appendField(b, &first, "port")
		b = strconv.AppendUint(b, uint64(e.Port), 10)
	}
	return append(b, '}')
}

// AppendJSON appends the batch's JSON form (see Record.AppendJSON).
func (bt *Batch) AppendJSON(b []byte) []byte {
	b = append(b, '{')
	first := true
	if len(bt.Records) > 0 {
		b = appendField(b, &first, "records")
		b = append(b, '[')
		for i, r := range bt.Records {
			if i > 0 {
				b = append(b, ',')
			}
			if r == nil {
				b = append(b, "null"...)
				continue
			}
			b = r.AppendJSON(b)
		}
		b = append(b, ']')
	}
	if bt.Dropped != 0 {
		b = appendField(b, &first, "dropped")
		b = strconv.AppendUint(b, bt.Dropped, 10)
	}
	return append(b, '}')
}

// appendKey appends ,"key": (a key after the first).
func appendKey(b []byte, key string) []byte {
	b = append(b, ',', '"')
	b = append(b, key...)
	return append(b, '"', ':')
}

// appendField appends "key": with the comma unless it is the object's
// first field.
func appendField(b []byte, first *bool, key string) []byte {
	if !*first {
		b = append(b, ',')
	}
	*first = false
	b = append(b, '"')
	b = append(b, key...)
	return append(b, '"', ':')
}

func appendOptString(b []byte, first *bool, key, v string) []byte {
	if v == "" {
		return b
	}
	b = appendField(b, first, key)
	return appendString(b, v)
}

func appendOptStrings(b []byte, first *bool, key string, vs []string) []byte {
	if len(vs) == 0 {
		return b
	}
	b = appendField(b, first, key)
	b = append(b, '[')
	for i, v := range vs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, v)
	}
	return append(b, ']')
}

const hex = "0123456789abcdef"

// jsonSafe[c] is true for the ASCII bytes appendString copies as they are.
var jsonSafe = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// appendString appends s as a JSON string as encoding/json does: control
// characters, quotes, backslashes, <, > and & escaped, invalid UTF-8 as
// U+FFFD, U+2028 and U+2029 escaped.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if jsonSafe[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

package hookclient

import (
	"errors"
	"unicode/utf16"
	"unicode/utf8"
)

// Request is what sshd tells the hook (%u %f %t %k) and what the hook
// forwards to the daemon over its unix socket, one JSON object per
// connection. The daemon decodes it with encoding/json.
type Request struct {
	Op          string `json:"op,omitempty"` // "" (authorize) or "tunnels" (root only)
	User        string `json:"user"`
	Fingerprint string `json:"fingerprint"`
	KeyType     string `json:"key_type"`
	Key         string `json:"key"`
}

// Reply is the daemon's answer: the authorized_keys lines to print, or a
// reason for refusing (logged by the daemon, never printed to sshd). The
// daemon encodes it with encoding/json; ParseReply reads it back.
type Reply struct {
	Allow  bool     `json:"allow"`
	Device string   `json:"device,omitempty"`
	Lines  []string `json:"lines,omitempty"`
	Reason string   `json:"reason,omitempty"`
}

// AppendRequest appends r as encoding/json would encode it (with a final
// newline, as json.Encoder writes it) to b.
func AppendRequest(b []byte, r Request) []byte {
	b = append(b, '{')
	if r.Op != "" {
		b = append(appendString(append(b, `"op":`...), r.Op), ',')
	}
	b = appendString(append(b, `"user":`...), r.User)
	b = appendString(append(b, `,"fingerprint":`...), r.Fingerprint)
	b = appendString(append(b, `,"key_type":`...), r.KeyType)
	b = appendString(append(b, `,"key":`...), r.Key)
	return append(b, '}', '\n')
}

// appendString quotes s as a JSON string. Invalid UTF-8 becomes U+FFFD, as
// encoding/json does.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		case c < utf8.RuneSelf:
			b = append(b, c)
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				b = append(b, `\ufffd`...)
			} else {
				b = append(b, s[i:i+size]...)
			}
			i += size
			continue
		}
		i++
	}
	return append(b, '"')
}

var errMalformed = errors.New("malformed daemon reply")

// ParseReply decodes the daemon's reply: one JSON object with Reply's fields
// and nothing else, as encoding/json writes it, and optional white space.
// It is stricter than encoding/json (no unknown or differently cased field,
// no null for a string or a bool); whatever it accepts, encoding/json
// decodes to the same Reply. A reply it refuses counts as no answer.
func ParseReply(b []byte) (Reply, error) {
	var r Reply
	p := parser{b: b}
	if !p.next('{') {
		return Reply{}, errMalformed
	}
	if !p.next('}') {
		for {
			key, ok := p.str()
			if !ok || !p.next(':') {
				return Reply{}, errMalformed
			}
			switch key {
			case "allow":
				r.Allow, ok = p.boolean()
			case "device":
				r.Device, ok = p.str()
			case "lines":
				r.Lines, ok = p.strs()
			case "reason":
				r.Reason, ok = p.str()
			default:
				ok = false
			}
			if !ok {
				return Reply{}, errMalformed
			}
			if p.next('}') {
				break
			}
			if !p.next(',') {
				return Reply{}, errMalformed
			}
		}
	}
	if p.skipSpace(); p.i != len(p.b) {
		return Reply{}, errMalformed
	}
	return r, nil
}

type parser struct {
	b []byte
	i int
}

func (p *parser) skipSpace() {
	for p.i < len(p.b) && (p.b[p.i] == ' ' || p.b[p.i] == '\t' || p.b[p.i] == '\n' || p.b[p.i] == '\r') {
		p.i++
	}
}

// next consumes white space and then c, if c comes next.
func (p *parser) next(c byte) bool {
	p.skipSpace()
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *parser) literal(s string) bool {
	p.skipSpace()
	if len(p.b)-p.i >= len(s) && string(p.b[p.i:p.i+len(s)]) == s {
		p.i += len(s)
		return true
	}
	return false
}

func (p *parser) boolean() (v, ok bool) {
	if p.literal("true") {
		return true, true
	}
	return false, p.literal("false")
}

// strs reads null (nil) or an array of strings.
func (p *parser) strs() ([]string, bool) {
	if p.literal("null") {
		return nil, true
	}
	if !p.next('[') {
		return nil, false
	}
	out := []string{}
	if p.next(']') {
		return out, true
	}
	for {
		s, ok := p.str()
		if !ok {
			return nil, false
		}
		out = append(out, s)
		if p.next(']') {
			return out, true
		}
		if !p.next(',') {
			return nil, false
		}
	}
}

// str reads a JSON string, unquoting it as encoding/json does: invalid UTF-8
// and lone surrogates become U+FFFD.
func (p *parser) str() (string, bool) {
	if !p.next('"') {
		return "", false
	}
	var out []byte
	for p.i < len(p.b) {
		c := p.b[p.i]
		switch {
		case c == '"':
			p.i++
			return string(out), true
		case c < 0x20:
			return "", false
		case c < utf8.RuneSelf && c != '\\':
			out = append(out, c)
			p.i++
		case c >= utf8.RuneSelf:
			r, size := utf8.DecodeRune(p.b[p.i:])
			if r == utf8.RuneError && size == 1 {
				out = utf8.AppendRune(out, utf8.RuneError)
			} else {
				out = append(out, p.b[p.i:p.i+size]...)
			}
			p.i += size
		default: // a backslash
			if p.i+1 >= len(p.b) {
				return "", false
			}
			e := p.b[p.i+1]
			p.i += 2
			switch e {
			case '"', '\\', '/':
				out = append(out, e)
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				r := p.hex4(p.i)
				if r < 0 {
					return "", false
				}
				p.i += 4
				if utf16.IsSurrogate(r) {
					// A pair only when a \u escape follows and completes it;
					// else U+FFFD, and what follows is read on its own.
					r2 := rune(-1)
					if p.i+1 < len(p.b) && p.b[p.i] == '\\' && p.b[p.i+1] == 'u' {
						r2 = p.hex4(p.i + 2)
					}
					if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
						r = d
						p.i += 6
					} else {
						r = utf8.RuneError
					}
				}
				out = utf8.AppendRune(out, r)
			default:
				return "", false
			}
		}
	}
	return "", false
}

// hex4 is the value of the four hex digits at b[i:], or -1.
func (p *parser) hex4(i int) rune {
	if i+4 > len(p.b) {
		return -1
	}
	var r rune
	for _, c := range p.b[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return -1
		}
		r = r<<4 | rune(c)
	}
	return r
}

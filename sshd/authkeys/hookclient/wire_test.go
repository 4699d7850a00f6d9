package hookclient

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// What the daemon writes (json.NewEncoder(conn).Encode(reply)) reads back the
// same, every field of Reply included.
func TestParseReplyReadsTheDaemonsEncoding(t *testing.T) {
	full := Reply{Allow: true, Device: "pi-<1>&", Reason: "r\u2028\"\\\t\x01é😀",
		Lines: []string{`restrict,port-forwarding,permitlisten="localhost:20001" ssh-ed25519 AAAA`, ""}}
	v := reflect.ValueOf(full)
	for i := 0; i < v.NumField(); i++ {
		if v.Field(i).IsZero() {
			t.Fatalf("the sample leaves Reply.%s unset: a new field needs ParseReply to learn it", v.Type().Field(i).Name)
		}
	}
	for _, r := range []Reply{full, {}, {Reason: "unknown key"}, {Device: "pi", Reason: "device is revoked"},
		{Allow: true, Device: "pi", Lines: []string{"a", "b"}}} {
		var buf bytes.Buffer
		if err := json.NewEncoder(&buf).Encode(r); err != nil {
			t.Fatal(err)
		}
		got, err := ParseReply(buf.Bytes())
		if err != nil || !reflect.DeepEqual(got, r) {
			t.Errorf("%s: got %+v, %v; want %+v", buf.Bytes(), got, err, r)
		}
	}
}

func TestParseReplyRefuses(t *testing.T) {
	for _, in := range []string{
		"", "\n", "null", "[]", "{", `{"allow":true`, `{"allow":true}x`, `{"allow":true}{}`,
		`{"allow":1}`, `{"allow":"true"}`, `{"allow":null}`, `{"Allow":true}`, `{"extra":1}`,
		`{"lines":["a",]}`, `{"lines":[1]}`, `{"lines":"a"}`, `{"allow":true,}`, `{,}`,
		`{"device":"a` + "\n" + `"}`, `{"device":"\x"}`, `{"device":"\u12"}`, `{"device":"\uzzzz"}`,
		`{"device":"\ud800\uzzzz"}`, `{"device":'a'}`, `{"allow":tru}`,
	} {
		if r, err := ParseReply([]byte(in)); err == nil {
			t.Errorf("%q accepted: %+v", in, r)
		}
	}
}

func FuzzParseReply(f *testing.F) {
	for _, s := range []string{
		`{"allow":true,"device":"pi","lines":["restrict,permitlisten=\"localhost:1\" ssh-ed25519 AAAA"]}` + "\n",
		`{"allow":false,"reason":"unknown key"}`, `{"lines":null}`, `{"lines":[]}`,
		`{"device":"\ud83d\ude00\ud800\u0041\udc00é\u00e9\/"}`, "{\"device\":\"\xff\xc3\"}", ` { "allow" : false } `,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := ParseReply(b)
		if err != nil {
			return
		}
		var want Reply
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatalf("%q: ParseReply accepted what encoding/json refuses (%v): %+v", b, err, got)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: ParseReply %+v, encoding/json %+v", b, got, want)
		}
	})
}

// The daemon reads requests with encoding/json, unknown fields refused.
func TestAppendRequestIsWhatTheDaemonReads(t *testing.T) {
	for _, r := range []Request{
		{User: "mas4h-tunnel", Fingerprint: testFP, KeyType: "ssh-ed25519", Key: testKey},
		{Op: "tunnels"},
		{User: "\"\\\n\x00\x1f<>&\u2028é😀", Key: "\xff"},
	} {
		b := AppendRequest(nil, r)
		got, err := decodeRequest(b)
		want := r
		want.Key = validUTF8(r.Key)
		if err != nil || got != want {
			t.Errorf("%q: got %+v, %v; want %+v", b, got, err, want)
		}
		if !json.Valid(b) || bytes.IndexByte(b, '\n') != len(b)-1 {
			t.Errorf("%q: not one line of JSON", b)
		}
	}
}

func FuzzAppendRequest(f *testing.F) {
	f.Add("mas4h-tunnel", testFP, "ssh-ed25519", testKey, "")
	f.Add("\"", "\\", "\x00", "\xff", "tunnels")
	f.Fuzz(func(t *testing.T, user, fp, typ, key, op string) {
		r := Request{Op: op, User: user, Fingerprint: fp, KeyType: typ, Key: key}
		got, err := decodeRequest(AppendRequest(nil, r))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []*string{&r.Op, &r.User, &r.Fingerprint, &r.KeyType, &r.Key} {
			*s = validUTF8(*s)
		}
		if got != r {
			t.Fatalf("got %+v, want %+v", got, r)
		}
	})
}

// validUTF8 replaces each byte of invalid UTF-8 with U+FFFD, as
// encoding/json does.
func validUTF8(s string) string { return string([]rune(s)) }

// decodeRequest is the daemon's decoder (sshd/hookserver.go).
func decodeRequest(b []byte) (Request, error) {
	var r Request
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	err := dec.Decode(&r)
	return r, err
}

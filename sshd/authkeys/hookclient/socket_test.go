package hookclient

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var testReq = Request{User: "mas4h-tunnel", Fingerprint: testFP, KeyType: "ssh-ed25519", Key: testKey}

// fakeDaemon listens on a unix socket in a temp dir and serves each
// connection with serve; it returns the socket's path.
func fakeDaemon(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	return fakeDaemonAt(t, filepath.Join(t.TempDir(), "hook.sock"), serve)
}

func fakeDaemonAt(t *testing.T, path string, serve func(net.Conn)) string {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); serve(c) }()
		}
	}()
	return path
}

// answer is the daemon's side of sshd/hookserver.go: decode a request, encode
// the reply.
func answer(t *testing.T, reply Reply) func(net.Conn) {
	return func(c net.Conn) {
		var req Request
		dec := json.NewDecoder(io.LimitReader(c, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil || req != testReq {
			t.Errorf("daemon read %+v, %v", req, err)
			return
		}
		json.NewEncoder(c).Encode(reply)
	}
}

func TestAskGetsTheDaemonsAnswer(t *testing.T) {
	line := `restrict,port-forwarding,permitlisten="localhost:20001" ssh-ed25519 ` + testKey
	for _, want := range []Reply{
		{Allow: true, Device: "pi", Lines: []string{line}},
		{Device: "pi", Reason: "device is revoked"}, // a refusal is an answer
		{Allow: true, Device: "big", Lines: []string{strings.Repeat("x", 300<<10)}},
	} {
		sock := fakeDaemon(t, answer(t, want))
		got, err := Ask(sock, testReq, time.Now().Add(time.Second))
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("got %.200v, %v", got, err)
		}
	}
}

// Whatever is not an answer is an error: the hook then asks the cache.
func TestAskWithoutAnAnswer(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]struct {
		socket string
		within time.Duration
	}{
		"no socket":                  {filepath.Join(dir, "none.sock"), 100 * time.Millisecond},
		"path too long for a socket": {"/" + strings.Repeat("x", 200), 100 * time.Millisecond},
		"closes at once":             {fakeDaemon(t, func(net.Conn) {}), 100 * time.Millisecond},
		"garbage":                    {fakeDaemon(t, func(c net.Conn) { io.WriteString(c, "HTTP/1.0 400 Bad Request\r\n\r\n") }), 100 * time.Millisecond},
		"half a reply":               {fakeDaemon(t, func(c net.Conn) { io.WriteString(c, `{"allow":true,"lines":["x"`) }), 100 * time.Millisecond},
		"unknown field":              {fakeDaemon(t, func(c net.Conn) { io.WriteString(c, `{"allow":true,"lines":["x"],"new":1}`+"\n") }), 100 * time.Millisecond},
		"over 1 MiB":                 {fakeDaemon(t, func(c net.Conn) { c.Write(bytes.Repeat([]byte(" "), 2<<20)) }), 500 * time.Millisecond},
		"hangs":                      {fakeDaemon(t, func(c net.Conn) { time.Sleep(2 * time.Second) }), 400 * time.Millisecond},
		"reads, hangs":               {fakeDaemon(t, func(c net.Conn) { io.Copy(io.Discard, c) }), 400 * time.Millisecond},
		"drips forever":              {fakeDaemon(t, func(c net.Conn) { drip(c, 2*time.Second) }), 400 * time.Millisecond},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			r, err := Ask(c.socket, testReq, start.Add(200*time.Millisecond))
			var ae *AskError
			if !errors.As(err, &ae) {
				t.Fatalf("got %+v, %v; want an AskError", r, err)
			}
			if took := time.Since(start); took > c.within {
				t.Errorf("took %s (deadline 200ms): %v", took, err)
			}
		})
	}
}

// drip writes a byte of white space every 10 ms.
func drip(c net.Conn, d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if _, err := c.Write([]byte(" ")); err != nil {
			return
		}
	}
}

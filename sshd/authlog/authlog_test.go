package authlog

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
)

const fp = "SHA256:FU9PwKlxRikrZeDW38TFQjIY2qg6vxzCbIcmqq/+oFk"

func TestParseAccepted(t *testing.T) {
	good := map[string]Accepted{
		"Accepted publickey for mas4h-tunnel from 127.0.0.1 port 43746 ssh2: ED25519 " + fp: {
			User: "mas4h-tunnel", Remote: netip.MustParseAddrPort("127.0.0.1:43746"), KeyType: "ED25519", Fingerprint: fp},
		"Accepted publickey for mas4h-tunnel from 2001:db8::7 port 1 ssh2: RSA " + fp + "\r\n": {
			User: "mas4h-tunnel", Remote: netip.MustParseAddrPort("[2001:db8::7]:1"), KeyType: "RSA", Fingerprint: fp},
		"Accepted publickey for op from ::ffff:198.18.0.2 port 65535 ssh2: ECDSA " + fp: {
			User: "op", Remote: netip.MustParseAddrPort("198.18.0.2:65535"), KeyType: "ECDSA", Fingerprint: fp},
	}
	for line, want := range good {
		got, ok := ParseAccepted(line)
		if !ok || got != want {
			t.Errorf("%q: %+v %v, want %+v", line, got, ok, want)
		}
	}
	for _, line := range []string{
		"",
		"Accepted key ED25519 " + fp + " found at /var/lib/mas4h/slave-s1/authorized_keys:3",
		"Accepted publickey for mas4h-tunnel from 127.0.0.1 port 43746 ssh2: ED25519 " + fp + " extra",
		"Accepted publickey for mas4h-tunnel from 127.0.0.1 port 43746 ssh2: ED25519-CERT " + fp + " ID x (serial 1) CA ED25519 " + fp,
		"Accepted publickey for mas4h-tunnel from 127.0.0.1 port 0 ssh2: ED25519 " + fp,
		"Accepted publickey for mas4h-tunnel from 127.0.0.1 port 65536 ssh2: ED25519 " + fp,
		"Accepted publickey for mas4h-tunnel from 127.0.0.1 port 0443 ssh2: ED25519 " + fp,
		"Accepted publickey for mas4h-tunnel from fe80::1%eth0 port 22 ssh2: ED25519 " + fp,
		"Accepted publickey for mas4h-tunnel from host.example port 22 ssh2: ED25519 " + fp,
		"Accepted publickey for Root from 127.0.0.1 port 22 ssh2: ED25519 " + fp,
		"Accepted publickey for mas4h-tunnel from 127.0.0.1 port 22 ssh2: ED25519 SHA256:short",
		"Accepted publickey for mas4h-tunnel from 127.0.0.1 port 22 ssh2: ED25519 MD5:" + fp[7:],
		"Accepted publickey for mas4h-tunnel from 127.0.0.1 port 22 ssh2: ed25519 " + fp,
		"Accepted password for mas4h-tunnel from 127.0.0.1 port 22 ssh2",
		"xAccepted publickey for mas4h-tunnel from 127.0.0.1 port 22 ssh2: ED25519 " + fp,
		"Accepted publickey for mas4h-tunnel  from 127.0.0.1 port 22 ssh2: ED25519 " + fp,
	} {
		if a, ok := ParseAccepted(line); ok {
			t.Errorf("%q parsed: %+v", line, a)
		}
	}
}

func TestParseClosed(t *testing.T) {
	for line, want := range map[string]string{
		"Disconnected from user mas4h-tunnel 127.0.0.1 port 43746":                "127.0.0.1:43746",
		"Connection closed by 198.18.0.2 port 40000":                              "198.18.0.2:40000",
		"Connection reset by 2001:db8::1 port 7":                                  "[2001:db8::1]:7",
		"Timeout, client not responding from user mas4h-tunnel 127.0.0.1 port 99": "127.0.0.1:99",
	} {
		c, ok := ParseClosed(line)
		if !ok || c.Remote.String() != want {
			t.Errorf("%q: %v %v, want %s", line, c.Remote, ok, want)
		}
	}
	for _, line := range []string{
		"Connection closed by authenticating user mas4h-tunnel 127.0.0.1 port 1 [preauth]",
		"Connection closed by 127.0.0.1 port 51070 [preauth]",
		"Disconnected from user mas4h-tunnel 127.0.0.1",
		"Received disconnect from 127.0.0.1 port 43746:11: disconnected by user",
		"Connection closed by x port 1",
	} {
		if c, ok := ParseClosed(line); ok {
			t.Errorf("%q parsed: %+v", line, c)
		}
	}
}

func TestIndex(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	x := NewIndex(func() time.Time { return now })
	a := netip.MustParseAddrPort("198.18.0.2:40000")
	b := netip.MustParseAddrPort("198.18.0.3:40000")
	x.Accept(Accepted{Remote: a, Fingerprint: fp, User: "mas4h-operator"})
	x.Accept(Accepted{Remote: b, Fingerprint: fp, User: "mas4h"})
	if x.Count(fp) != 2 || x.Fingerprints()[fp] != 2 {
		t.Fatalf("count %d", x.Count(fp))
	}
	if op := x.Users("mas4h-operator"); len(op) != 1 || op[0] != a || len(x.Users("mas4h")) != 1 || len(x.Users("root")) != 0 {
		t.Errorf("users: operator %v, tunnel %v", op, x.Users("mas4h"))
	}
	if got, ok := x.Lookup(a); !ok || got.Fingerprint != fp {
		t.Errorf("lookup: %+v %v", got, ok)
	}
	x.Close(a)
	if _, ok := x.Lookup(a); ok || x.Count(fp) != 1 || len(x.Users("mas4h-operator")) != 0 {
		t.Error("closed connection still known")
	}
	// A walk that does not see b forgets it, unless b is newer than the grace.
	x.Keep(map[netip.AddrPort]bool{}, time.Minute)
	if x.Len() != 1 {
		t.Error("a connection younger than the grace was forgotten")
	}
	now = now.Add(2 * time.Minute)
	x.Keep(map[netip.AddrPort]bool{}, time.Minute)
	if x.Len() != 0 {
		t.Error("a connection no walk sees was kept")
	}
}

// collector gathers what a follower hands out.
type collector struct {
	mu    sync.Mutex
	lines []string
	live  []bool
}

func (c *collector) each(line []byte, live bool) {
	c.mu.Lock()
	c.lines = append(c.lines, string(line))
	c.live = append(c.live, live)
	c.mu.Unlock()
}

func (c *collector) got() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines...)
}

func startFollower(t *testing.T, f *Follower) *collector {
	t.Helper()
	f.Poll = 10 * time.Millisecond
	f.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	c := &collector{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Run(ctx, c.each); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func appendTo(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

// The follower hands out what was there (not live), then each line as it
// is completed (live), across a truncation and a replacement of the file.
func TestFollower(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sshd.log")
	appendTo(t, path, "old 1\nold 2\n")
	c := startFollower(t, &Follower{Path: path})
	testkit.Eventually(t, 5*time.Second, func() bool { return len(c.got()) == 2 }, "backlog not read: %q", c.got())
	appendTo(t, path, "new 1\nnew ")
	appendTo(t, path, "2\n")
	testkit.Eventually(t, 5*time.Second, func() bool { return len(c.got()) == 4 }, "lines %q", c.got())
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	appendTo(t, path, "after truncation\n")
	testkit.Eventually(t, 5*time.Second, func() bool { return len(c.got()) == 5 }, "lines %q", c.got())
	// Rotated: a new file at the path.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	appendTo(t, path, "rotated\n")
	testkit.Eventually(t, 5*time.Second, func() bool { return len(c.got()) == 6 }, "lines %q", c.got())
	want := []string{"old 1", "old 2", "new 1", "new 2", "after truncation", "rotated"}
	if got := c.got(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("lines %q, want %q", got, want)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.live[0] || c.live[1] || !c.live[2] || !c.live[5] {
		t.Errorf("live flags %v", c.live)
	}
}

// Only the last Backlog bytes are read at start, from a whole line on;
// an overlong line is dropped whole.
func TestFollowerBacklogAndLongLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sshd.log")
	var b strings.Builder
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&b, "line %03d\n", i)
	}
	appendTo(t, path, b.String())
	c := startFollower(t, &Follower{Path: path, Backlog: 50}) // the last 5 lines and the end of the one before
	testkit.Eventually(t, 5*time.Second, func() bool { return len(c.got()) >= 5 }, "lines %q", c.got())
	if got := c.got(); got[0] != "line 095" || len(got) != 5 {
		t.Errorf("backlog lines %q", got)
	}
	appendTo(t, path, strings.Repeat("x", 2*maxLine)+"\nshort\n")
	testkit.Eventually(t, 5*time.Second, func() bool { return len(c.got()) == 6 }, "lines %q", c.got())
	if got := c.got(); got[5] != "short" {
		t.Errorf("after an overlong line: %q", got[5:])
	}
}

// A link where the log should be is never followed.
func TestFollowerRefusesLinks(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	appendTo(t, secret, "Accepted publickey for mas4h-tunnel from 127.0.0.1 port 1 ssh2: ED25519 "+fp+"\n")
	path := filepath.Join(dir, "sshd.log")
	if err := os.Symlink(secret, path); err != nil {
		t.Fatal(err)
	}
	f := &Follower{Path: path}
	c := startFollower(t, f)
	time.Sleep(100 * time.Millisecond) // ten polls: a window for a wrong read, not a wait for a condition
	if got := c.got(); len(got) != 0 {
		t.Errorf("read through a link: %q", got)
	}
}

package sshdversion

import (
	"context"
	"strings"
	"testing"

	"github.com/mas4h/mas4h/process"
)

// What the sshd of each release printed for -V, as seen on the hosts the
// tests run on (Debian 12 and 13) and others fleets use.
func TestParse(t *testing.T) {
	for _, c := range []struct {
		out          string
		major, minor int
		release      string
	}{
		{"OpenSSH_9.2, OpenSSL 3.0.19 27 Jan 2026\n", 9, 2, "OpenSSH_9.2"}, // Debian 12's sshd -V
		{"unknown option -- V\nOpenSSH_9.2p1 Debian-2+deb12u10, OpenSSL 3.0.19 27 Jan 2026\nusage: sshd [-46DdeiqTtV]", 9, 2, "OpenSSH_9.2p1 Debian-2+deb12u10"},
		{"OpenSSH_10.0p2 Debian-7+deb13u4, OpenSSL 3.5.9 29 Sep 2026\n", 10, 0, "OpenSSH_10.0p2 Debian-7+deb13u4"},
		{"OpenSSH_8.9p1 Ubuntu-3ubuntu0.10, OpenSSL 3.0.2 15 Mar 2022\n", 8, 9, "OpenSSH_8.9p1 Ubuntu-3ubuntu0.10"},
		{"OpenSSH_9.8p1, LibreSSL 3.3.6\n", 9, 8, "OpenSSH_9.8p1"},
		{"OpenSSH_7.4p1, OpenSSL 1.0.2k-fips  26 Jan 2017\n", 7, 4, "OpenSSH_7.4p1"},
	} {
		v, err := Parse([]byte(c.out))
		if err != nil {
			t.Errorf("Parse(%q): %v", c.out, err)
			continue
		}
		if v.Major != c.major || v.Minor != c.minor || v.Release != c.release {
			t.Errorf("Parse(%q) = %+v, want %d.%d %q", c.out, v, c.major, c.minor, c.release)
		}
	}
	for _, bad := range []string{"", "dropbear v2022.83", "sshd: command not found", "OpenSSH_x.y"} {
		if v, err := Parse([]byte(bad)); err == nil {
			t.Errorf("Parse(%q) = %+v, want an error", bad, v)
		}
	}
}

func TestFor(t *testing.T) {
	for _, c := range []struct {
		major, minor                    int
		penalties, mlkem, session, auth bool
	}{
		{8, 4, false, false, false, false},
		{9, 2, false, false, false, false},
		{9, 7, false, false, false, false},
		{9, 8, true, false, true, false},
		{9, 9, true, true, true, false},
		{10, 0, true, true, true, true},
		{10, 2, true, true, true, true},
		{11, 0, true, true, true, true},
	} {
		f := For(Version{Major: c.major, Minor: c.minor})
		if f.PerSourcePenalties != c.penalties || f.MLKEM != c.mlkem || f.SessionBinary != c.session || f.AuthBinary != c.auth {
			t.Errorf("For(%d.%d) = %+v", c.major, c.minor, f)
		}
	}
}

// fakeSSHD answers -V with version and -t with what an sshd that knows
// (or not) DebianBanner says.
func fakeSSHD(version string, debian bool) *process.Fake {
	f := &process.Fake{}
	f.On("/usr/sbin/sshd -V", version+", OpenSSL 3.0.19\n", nil)
	if debian {
		// Debian 13 as root with no /run/sshd: a failure, but not about the keyword.
		f.On("/usr/sbin/sshd -t", "Missing privilege separation directory: /run/sshd\n", process.Exit(255, ""))
	} else {
		f.On("/usr/sbin/sshd -t", "command-line: line 0: Bad configuration option: DebianBanner\n", process.Exit(1, ""))
	}
	return f
}

func TestDetect(t *testing.T) {
	ctx := context.Background()
	f, err := Detect(ctx, fakeSSHD("OpenSSH_10.0p2 Debian-7+deb13u4", true), "/usr/sbin/sshd")
	if err != nil {
		t.Fatal(err)
	}
	if !f.PerSourcePenalties || !f.MLKEM || !f.DebianBanner || f.Version.String() != "OpenSSH 10.0" {
		t.Errorf("Debian 13: %+v", f)
	}
	f, err = Detect(ctx, fakeSSHD("OpenSSH_9.9p1", false), "/usr/sbin/sshd")
	if err != nil {
		t.Fatal(err)
	}
	if !f.PerSourcePenalties || f.DebianBanner {
		t.Errorf("upstream 9.9: %+v", f)
	}
	// Exits 1 after printing its version, as OpenSSH before 9.4 does for -V.
	old := &process.Fake{}
	old.On("/usr/sbin/sshd -V", "unknown option -- V\nOpenSSH_9.2p1 Debian-2+deb12u10, OpenSSL 3.0.19\nusage: sshd", process.Exit(1, ""))
	if f, err = Detect(ctx, old, "/usr/sbin/sshd"); err != nil || f.Version.Minor != 2 || !f.DebianBanner {
		t.Errorf("9.2 exiting 1: %+v, %v", f, err)
	}
	if _, err := Detect(ctx, &process.Fake{Handle: func(process.Cmd) ([]byte, error) { return []byte("dropbear v2022.83"), nil }}, "/usr/sbin/sshd"); err == nil {
		t.Error("Detect accepted a non-OpenSSH sshd")
	}
	missing := &process.Fake{Handle: func(c process.Cmd) ([]byte, error) {
		return nil, &process.Error{Argv: c.Argv, Code: -1, Err: context.Canceled}
	}}
	if _, err := Knows(ctx, missing, "/nonexistent/sshd", "DebianBanner", "no"); err == nil || !strings.Contains(err.Error(), "DebianBanner") {
		t.Errorf("Knows of an sshd that does not start: %v", err)
	}
}

// The real sshd of this host, when there is one: its version parses and
// the probe does not fail.
func TestDetectHost(t *testing.T) {
	f, err := Detect(context.Background(), process.Exec{}, "/usr/sbin/sshd")
	if err != nil {
		t.Skipf("no usable sshd here: %v", err)
	}
	t.Logf("%s (%s): %+v", f.Version, f.Version.Release, f)
}

// Package sshdversion tells which OpenSSH a slave's sshd is and what that
// release knows, so that the slave renders an sshd_config for the sshd it
// runs: OpenSSH 9.8 penalises source addresses by default and rejects
// nothing new, 9.2 rejects the keyword that turns that off; ML-KEM key
// exchange exists from 9.9; Debian's builds know DebianBanner, others do not.
// The version comes from `sshd -V`; what no version says (a distribution's
// patch) is asked of sshd itself with `sshd -t`.
package sshdversion

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/mas4h/mas4h/process"
)

// Version is an OpenSSH release, as `sshd -V` names it.
type Version struct {
	Major, Minor int
	// Release is the whole release name ("OpenSSH_10.0p2 Debian-7+deb13u4").
	Release string
}

var versionRE = regexp.MustCompile(`OpenSSH_(\d+)\.(\d+)[^,\s]*(?: [^,\s]+)?`)

// Parse finds the OpenSSH release in what `sshd -V` (or `ssh -V`) printed.
func Parse(out []byte) (Version, error) {
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return Version{}, fmt.Errorf("no OpenSSH version in %q", strings.TrimSpace(string(out)))
	}
	major, err := strconv.Atoi(string(m[1]))
	if err != nil {
		return Version{}, fmt.Errorf("OpenSSH version in %q: %w", m[0], err)
	}
	minor, err := strconv.Atoi(string(m[2]))
	if err != nil {
		return Version{}, fmt.Errorf("OpenSSH version in %q: %w", m[0], err)
	}
	return Version{Major: major, Minor: minor, Release: string(m[0])}, nil
}

// AtLeast says whether v is release major.minor or newer.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || v.Major == major && v.Minor >= minor
}

// String is "OpenSSH 9.2".
func (v Version) String() string { return fmt.Sprintf("OpenSSH %d.%d", v.Major, v.Minor) }

// Features is what a slave's sshd_config may name for this sshd.
type Features struct {
	Version Version
	// PerSourcePenalties: OpenSSH 9.8 and newer refuse, for a while, every
	// connection from an address (a whole NAT) whose earlier connections
	// failed to authenticate, crashed sshd or never tried; on unless the
	// config says otherwise. Older releases reject the keyword.
	PerSourcePenalties bool
	// MLKEM: the post-quantum hybrid kex mlkem768x25519-sha256 (9.9).
	MLKEM bool
	// SessionBinary: sshd execs sshd-session for each connection (9.8),
	// and sshd-auth for its unprivileged part too (10.0, AuthBinary).
	SessionBinary, AuthBinary bool
	// DebianBanner: Debian's patch that lets the config drop the
	// distribution's suffix ("Debian-2+deb12u10") from the SSH banner.
	DebianBanner bool
}

// For is what OpenSSH's release v knows by itself. DebianBanner depends on
// the build, not the release: Detect asks sshd.
func For(v Version) Features {
	return Features{
		Version:            v,
		PerSourcePenalties: v.AtLeast(9, 8),
		MLKEM:              v.AtLeast(9, 9),
		SessionBinary:      v.AtLeast(9, 8),
		AuthBinary:         v.AtLeast(10, 0),
	}
}

// Runner runs a program: process.Exec, or a fake in tests.
type Runner interface {
	Run(ctx context.Context, c process.Cmd) ([]byte, error)
}

// Detect asks the sshd at path for its version (`sshd -V`, on standard
// error; OpenSSH before 9.4 exits non-zero after printing it) and whether
// it knows DebianBanner.
func Detect(ctx context.Context, run Runner, path string) (Features, error) {
	c := process.Command(path, "-V")
	c.Combined = true
	out, err := run.Run(ctx, c)
	v, perr := Parse(out)
	if perr != nil {
		if err == nil {
			err = perr
		}
		return Features{}, fmt.Errorf("asking %s its version: %w (--sshd must be OpenSSH's sshd, e.g. /usr/sbin/sshd)", path, err)
	}
	f := For(v)
	if f.DebianBanner, err = Knows(ctx, run, path, "DebianBanner", "no"); err != nil {
		return Features{}, err
	}
	return f, nil
}

// Knows says whether the sshd at path accepts keyword (with value) in its
// config. It checks an empty config with the keyword on the command line
// (`sshd -t -f /dev/null -o KEYWORD=VALUE`): sshd says "Bad configuration
// option" or "Unsupported option" for a keyword it does not know, and may
// fail for reasons that have nothing to do with it (no host keys, no
// privilege separation dir), which mean it does know it.
func Knows(ctx context.Context, run Runner, path, keyword, value string) (bool, error) {
	c := process.Command(path, "-t", "-f", "/dev/null", "-o", keyword+"="+value)
	c.Combined = true
	out, err := run.Run(ctx, c)
	msg := string(out)
	var pe *process.Error
	switch {
	case errors.As(err, &pe) && pe.Code >= 0: // it ran, and said why it failed
		msg += "\n" + pe.Stderr
	case err != nil:
		return false, fmt.Errorf("asking %s whether it knows %s: %w", path, keyword, err)
	}
	for _, refusal := range []string{"Bad configuration option: " + keyword, "Unsupported option " + keyword, "Deprecated option " + keyword} {
		if strings.Contains(msg, refusal) {
			return false, nil
		}
	}
	return true, nil
}

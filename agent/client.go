package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/process"
)

// Client kinds for Config.SSHClient.
const (
	ClientAuto     = "auto"
	ClientOpenSSH  = "openssh"
	ClientDropbear = "dropbear"
)

// SSHClient is the system client the agent drives.
type SSHClient struct {
	Kind string // ClientOpenSSH or ClientDropbear
	Path string
}

// KeyFormat is the key format this client reads.
func (c SSHClient) KeyFormat() KeyFormat {
	if c.Kind == ClientDropbear {
		return FormatDropbear
	}
	return FormatOpenSSH
}

// Lookup finds programs and asks them what they are; the real one looks in
// PATH and runs `PROG -V`.
type Lookup interface {
	LookPath(name string) (string, error)
	Version(ctx context.Context, path string) string
}

type execLookup struct{}

func (execLookup) LookPath(name string) (string, error) { return process.Exec{}.LookPath(name) }

func (execLookup) Version(ctx context.Context, path string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c := process.Command(path, "-V")
	c.Combined = true // both clients print their version on stderr
	out, _ := process.Exec{}.Run(ctx, c)
	return string(out)
}

// DetectClient finds the client for want (auto, openssh or dropbear). On
// OpenWrt `ssh` is often dropbear's dbclient under another name, so `ssh`
// is asked what it is rather than trusted by name.
func DetectClient(ctx context.Context, want string, l Lookup) (SSHClient, error) {
	kindOf := func(path string) string {
		v := l.Version(ctx, path)
		switch {
		case strings.Contains(v, "OpenSSH"):
			return ClientOpenSSH
		case strings.Contains(strings.ToLower(v), "dropbear"):
			return ClientDropbear
		}
		return ""
	}
	var sshKind, sshPath string
	if p, err := l.LookPath("ssh"); err == nil {
		sshPath, sshKind = p, kindOf(p)
	}
	dbPath, dbErr := l.LookPath("dbclient")
	switch want {
	case ClientOpenSSH:
		if sshKind == ClientOpenSSH {
			return SSHClient{ClientOpenSSH, sshPath}, nil
		}
		if sshPath != "" {
			return SSHClient{}, fmt.Errorf("%s is not OpenSSH's ssh (it says %q); use --ssh-client dropbear or auto", sshPath, firstLine(l.Version(ctx, sshPath)))
		}
		return SSHClient{}, errors.New("OpenSSH's ssh is not installed (not in PATH)")
	case ClientDropbear:
		if dbErr == nil {
			return SSHClient{ClientDropbear, dbPath}, nil
		}
		if sshKind == ClientDropbear {
			return SSHClient{ClientDropbear, sshPath}, nil
		}
		return SSHClient{}, errors.New("dropbear's dbclient is not installed (not in PATH)")
	case ClientAuto, "":
		if sshKind == ClientOpenSSH {
			return SSHClient{ClientOpenSSH, sshPath}, nil
		}
		if dbErr == nil {
			return SSHClient{ClientDropbear, dbPath}, nil
		}
		if sshKind == ClientDropbear {
			return SSHClient{ClientDropbear, sshPath}, nil
		}
		return SSHClient{}, errors.New("no SSH client found: install OpenSSH's ssh or dropbear's dbclient")
	default:
		return SSHClient{}, fmt.Errorf("unknown ssh client %q (auto, openssh or dropbear)", want)
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// Files are where the agent keeps what a client needs, in its state dir.
type Files struct {
	KnownHosts string // OpenSSH's UserKnownHostsFile
	Home       string // HOME for dbclient, which reads $HOME/.ssh/known_hosts
	Key        string // the key file the client is given
}

// Argv returns the client's command line for slot.
func (c SSHClient) Argv(slot wire.Slot, f Files, keepalive time.Duration, connectTimeout time.Duration) []string {
	port := strconv.Itoa(slot.Port)
	secs := strconv.Itoa(int(keepalive / time.Second))
	var args []string
	if c.Kind == ClientDropbear {
		// -K: keepalive every N s, and dropbear gives up after 3 unanswered
		// ones (like ServerAliveCountMax=3). No -I: idle tunnels are normal.
		// Without -y an unknown or changed host key is refused.
		args = []string{c.Path, "-N", "-T", "-i", f.Key, "-p", port, "-K", secs,
			"-o", "ExitOnForwardFailure=yes", "-l", slot.User}
		for _, fw := range slot.Forwards {
			args = append(args, "-R", strconv.Itoa(fw.RemotePort)+":"+fw.Target)
		}
		return append(args, slot.Host)
	}
	args = []string{c.Path, "-N", "-F", "/dev/null", "-i", f.Key, "-p", port,
		"-o", "ExitOnForwardFailure=yes",
		"-o", "ServerAliveInterval=" + secs, "-o", "ServerAliveCountMax=3",
		"-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + f.KnownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null", "-o", "UpdateHostKeys=no", "-o", "CheckHostIP=no",
		"-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
		"-o", "ConnectTimeout=" + strconv.Itoa(int(connectTimeout/time.Second)),
		"-o", "LogLevel=ERROR", "-l", slot.User}
	for _, fw := range slot.Forwards {
		args = append(args, "-R", strconv.Itoa(fw.RemotePort)+":"+fw.Target)
	}
	return append(args, "--", slot.Host)
}

// KnownHosts renders the known_hosts lines that pin slot's host keys: for
// OpenSSH "[host]:port key" (plain "host" on port 22); dropbear matches
// the host name only, so it gets "host key" lines (and the bracketed form,
// which it skips, for whoever reads the file).
func KnownHosts(slot wire.Slot, kind string) []byte {
	name := slot.Host
	if slot.Port != 22 {
		name = "[" + slot.Host + "]:" + strconv.Itoa(slot.Port)
	}
	var b strings.Builder
	b.WriteString("# managed by mas4h-agent: host keys of slave " + slot.Slave + " from the master's slot\n")
	for _, k := range slot.HostKeys {
		if kind == ClientDropbear {
			b.WriteString(slot.Host + " " + k + "\n")
		}
		b.WriteString(name + " " + k + "\n")
	}
	return []byte(b.String())
}

// Exit reasons of a client, from its stderr.
const (
	ReasonHostKey    = "host key mismatch"
	ReasonHostKeyNew = "host key unknown"
	ReasonAuth       = "key refused"
	ReasonForward    = "forward refused"
	ReasonConnect    = "connection failed"
	ReasonEnded      = "session ended"
)

// Classify names why a client exited, from what it printed.
func Classify(stderr string) (reason, hint string) {
	s := strings.ToLower(stderr)
	switch {
	case strings.Contains(s, "remote host identification has changed"), strings.Contains(s, "host key mismatch"),
		strings.Contains(s, "host key for") && strings.Contains(s, "has changed"):
		return ReasonHostKey, "the slave's host key differs from the one pinned from the master's slot; refusing to connect (the slave was reinstalled, or someone is in the middle); the agent re-asks the master before every attempt"
	case strings.Contains(s, "host key verification failed"), strings.Contains(s, "not in the trusted hosts file"),
		strings.Contains(s, "didn't validate host key"), strings.Contains(s, "no hostkey alg"):
		return ReasonHostKeyNew, "the slave's host key is not among those the master's slot pinned; refusing to connect"
	case strings.Contains(s, "permission denied"), strings.Contains(s, "no auth methods could be used"),
		strings.Contains(s, "exhausted available authentication"):
		return ReasonAuth, "the slave refused the device key (revoked, or not yet known to this slave)"
	case strings.Contains(s, "remote port forwarding failed"), strings.Contains(s, "could not set up remote forwarding"),
		strings.Contains(s, "forwarding failed"):
		return ReasonForward, "the slave refused a forward (the port is still held by an older session, or not leased to this device)"
	case strings.Contains(s, "connection refused"), strings.Contains(s, "timed out"), strings.Contains(s, "no route to host"),
		strings.Contains(s, "network is unreachable"), strings.Contains(s, "could not resolve"), strings.Contains(s, "name or service not known"),
		strings.Contains(s, "connect to host"), strings.Contains(s, "error connecting"):
		return ReasonConnect, "the slave did not accept the connection"
	}
	return ReasonEnded, ""
}

// validSlot checks a slot before any of it reaches a command line or
// known_hosts: the master is trusted, but its answer may be mangled.
func validSlot(s wire.Slot) error {
	switch {
	case !safeHost(s.Host):
		return fmt.Errorf("host %q is not a host name or address", s.Host)
	case s.Port < 1 || s.Port > 65535:
		return fmt.Errorf("port %d is out of range", s.Port)
	case !safeWord(s.User):
		return fmt.Errorf("user %q is not a user name", s.User)
	case len(s.HostKeys) == 0:
		return errors.New("it pins no host key")
	case len(s.Forwards) == 0:
		return errors.New("it has no forward")
	}
	for _, k := range s.HostKeys {
		f := strings.Fields(k)
		if len(f) != 2 || strings.ContainsAny(k, "\n\r") || !safeWord(f[0]) || !base64ish(f[1]) {
			return fmt.Errorf("host key %q is not \"TYPE BASE64\"", trunc(k))
		}
	}
	for _, fw := range s.Forwards {
		host, port, err := net.SplitHostPort(fw.Target)
		p, perr := strconv.Atoi(port)
		if err != nil || perr != nil || p < 1 || p > 65535 || !safeHost(strings.Trim(host, "[]")) {
			return fmt.Errorf("forward %q: target %q is not HOST:PORT", fw.Name, trunc(fw.Target))
		}
		if fw.RemotePort < 1 || fw.RemotePort > 65535 {
			return fmt.Errorf("forward %q: remote port %d is out of range", fw.Name, fw.RemotePort)
		}
	}
	return nil
}

func safeHost(h string) bool {
	if h == "" || len(h) > 253 || h[0] == '-' {
		return false
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == ':' || c == '_') {
			return false
		}
	}
	return true
}

func safeWord(w string) bool {
	if w == "" || len(w) > 64 || w[0] == '-' {
		return false
	}
	for _, c := range w {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_' || c == '@') {
			return false
		}
	}
	return true
}

func base64ish(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '=') {
			return false
		}
	}
	return true
}

func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/sys/unix"

	"github.com/spf13/pflag"

	"github.com/mas4h/mas4h/atomicfile"
	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/wire"
)

// operatorFlags are how the operator's commands (ssh, proxy, ssh-config)
// find the master and prove who they are: no admin token, the operator's
// own SSH key.
type operatorFlags struct {
	master string
	key    string
}

func (o *operatorFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&o.master, "master", "", "master URL, e.g. https://master.example.net:8080, or several masters of one fleet as URL,URL,... (tried in order, the next when one does not answer) (default $MAS4H_MASTER)")
	fs.StringVar(&o.key, "key", "", "your operator key: an OpenSSH private key file without passphrase, or the public half (FILE.pub) of a key your ssh-agent holds (default: the first key of your ssh-agent, then of ~/.ssh/id_*, that the master knows)")
}

// url is the master's URL from the flag or the environment.
func (o *operatorFlags) url() (string, error) {
	u := o.master
	if u == "" {
		u = os.Getenv("MAS4H_MASTER")
	}
	if u == "" {
		return "", usagef("no master given: pass --master URL (or set MAS4H_MASTER)")
	}
	return u, nil
}

// identity is a key an operator may sign with, and how the system ssh is
// told to use the same key: the private key file, or the public half of an
// agent's key (ssh then signs with the agent, IdentitiesOnly keeps it to
// that one key).
type identity struct {
	signer ssh.Signer
	file   string // for ssh -i
	from   string // where it came from, for messages
}

func (id identity) fingerprint() string { return ssh.FingerprintSHA256(id.signer.PublicKey()) }

// configDir is mas4h's directory of the operator's own files:
// $XDG_CONFIG_HOME/mas4h, else ~/.config/mas4h.
func configDir() (string, error) {
	if d := os.Getenv("XDG_CONFIG_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "mas4h"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("finding mas4h's config directory: %w (set HOME or XDG_CONFIG_HOME)", err)
	}
	return filepath.Join(home, ".config", "mas4h"), nil
}

// identities lists the keys to try, in order: --key's alone when given,
// else the agent's, then the unencrypted default key files.
func identities(keyFlag, dir string) ([]identity, error) {
	ag := dialAgent()
	if keyFlag != "" {
		id, err := keyIdentity(keyFlag, ag, dir)
		if err != nil {
			return nil, err
		}
		return []identity{id}, nil
	}
	var ids []identity
	if ag != nil {
		signers, err := ag.Signers()
		if err != nil {
			return nil, fmt.Errorf("listing the keys of your ssh-agent (SSH_AUTH_SOCK): %w", err)
		}
		for _, s := range signers {
			pub, err := writeAgentPublic(dir, s.PublicKey())
			if err != nil {
				return nil, err
			}
			ids = append(ids, identity{signer: s, file: pub, from: "your ssh-agent"})
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		for _, name := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			path := filepath.Join(home, ".ssh", name)
			b, err := os.ReadFile(path)
			if err != nil {
				continue
			}
			if s, err := ssh.ParsePrivateKey(b); err == nil {
				ids = append(ids, identity{signer: s, file: path, from: path})
			}
		}
	}
	if len(ids) == 0 {
		return nil, usagef("no operator key: pass --key FILE, or load your key into an ssh-agent (ssh-add) so SSH_AUTH_SOCK reaches it")
	}
	return ids, nil
}

// keyIdentity reads --key FILE: a private key without passphrase, a
// passphrase-protected one that the agent holds, or a public key whose
// private half the agent holds. mas4h never asks for a passphrase.
func keyIdentity(path string, ag agent.ExtendedAgent, dir string) (identity, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return identity{}, usagef("--key: %v", err)
	}
	var pub ssh.PublicKey
	if pk, _, _, _, perr := ssh.ParseAuthorizedKey(b); perr == nil {
		pub = pk
	} else {
		s, err := ssh.ParsePrivateKey(b)
		var pm *ssh.PassphraseMissingError
		switch {
		case err == nil:
			return identity{signer: s, file: path, from: path}, nil
		case errors.As(err, &pm) && pm.PublicKey != nil:
			pub = pm.PublicKey
		case errors.As(err, &pm):
			return identity{}, usagef("--key %s is passphrase-protected: mas4h asks no passphrase; add the key to your ssh-agent (ssh-add %s) and pass its public half (--key %s.pub) or no --key", path, path, path)
		default:
			return identity{}, usagef("--key %s is neither an OpenSSH private key nor a public key: %v", path, err)
		}
	}
	fp := ssh.FingerprintSHA256(pub)
	if ag == nil {
		return identity{}, usagef("--key %s: its private half (%s) must be in your ssh-agent, and no ssh-agent is running (SSH_AUTH_SOCK is unset or dead): start one and ssh-add the key", path, fp)
	}
	signers, err := ag.Signers()
	if err != nil {
		return identity{}, fmt.Errorf("listing the keys of your ssh-agent (SSH_AUTH_SOCK): %w", err)
	}
	for _, s := range signers {
		if bytes.Equal(s.PublicKey().Marshal(), pub.Marshal()) {
			file, err := writeAgentPublic(dir, pub)
			if err != nil {
				return identity{}, err
			}
			return identity{signer: s, file: file, from: "your ssh-agent"}, nil
		}
	}
	return identity{}, usagef("--key %s (%s) is not in your ssh-agent: ssh-add it (mas4h asks no passphrase)", path, fp)
}

// dialAgent connects to the ssh-agent of SSH_AUTH_SOCK; nil if none. The
// connection lasts as long as the command: its signers sign the access
// request, then the command ends or becomes ssh (the socket is
// close-on-exec).
func dialAgent() agent.ExtendedAgent {
	sock := os.Getenv("SSH_AUTH_SOCK")
	if sock == "" {
		return nil
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return nil
	}
	return agent.NewClient(conn)
}

// writeAgentPublic keeps the public half of an agent's key in mas4h's
// config directory, named by its fingerprint, for ssh's -i.
func writeAgentPublic(dir string, pub ssh.PublicKey) (string, error) {
	sum := sha256.Sum256(pub.Marshal())
	path := filepath.Join(dir, "keys", "agent-"+hex.EncodeToString(sum[:8])+".pub")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("keeping your agent's public key for ssh: %w", err)
	}
	if _, err := atomicfile.WriteIfChanged(path, ssh.MarshalAuthorizedKey(pub), 0o600); err != nil {
		return "", fmt.Errorf("keeping your agent's public key for ssh: %w", err)
	}
	return path, nil
}

// access asks the master where device's forward is, signing with the
// first of ids the master knows as an operator's key. The refusals come
// back in the operator's words (accessError).
func access(ctx context.Context, c *client.Client, ids []identity, device, forward string) (wire.Access, identity, error) {
	var unknown []string
	var refusal error
	for _, id := range ids {
		a, err := c.Access(ctx, id.signer, device, forward)
		if err == nil {
			return a, id, nil
		}
		var ae *client.Error
		if errors.As(err, &ae) && ae.Status == 403 && len(ids) > 1 {
			// Another of the operator's keys may be the enrolled one.
			if strings.Contains(ae.Message, "not an operator's") {
				unknown = append(unknown, id.fingerprint()+" ("+id.from+")")
			} else if refusal == nil {
				refusal = err
			}
			continue
		}
		return wire.Access{}, identity{}, accessError(err, c.URL(), device, forward)
	}
	if refusal != nil {
		return wire.Access{}, identity{}, accessError(refusal, c.URL(), device, forward)
	}
	return wire.Access{}, identity{}, fmt.Errorf("none of your keys is an operator's on the master at %s (tried %s): ask an admin to enrol yours (mas4h operator add NAME --key FILE.pub), or pick it with --key",
		c.URL(), strings.Join(unknown, ", "))
}

// accessError says why the master refused an access request, in the
// operator's terms. The master's own messages name the operator, the
// device and, when offline, since when and on which slave.
func accessError(err error, masterURL, device, forward string) error {
	var ae *client.Error
	if !errors.As(err, &ae) {
		return err
	}
	msg := ae.Message
	switch ae.Status {
	case 404:
		if strings.Contains(msg, "may reach no device") {
			return fmt.Errorf("%s: it is not enrolled, or not on your allow list (an admin sees yours with 'mas4h operator show NAME')", msg)
		}
		return errors.New(msg) // no such forward: the message lists the device's forwards
	case 409:
		return fmt.Errorf("%s: its tunnel is down; it comes back when the device reconnects", msg)
	case 403:
		if strings.Contains(msg, "not an operator's") {
			return errors.New(msg)
		}
		return fmt.Errorf("%s: you may reach no device through the master at %s; ask an admin", msg, masterURL)
	case 429:
		wait := "a moment"
		if ae.RetryAfter > 0 {
			wait = ae.RetryAfter.String()
		}
		return fmt.Errorf("the master at %s is refusing access requests this fast: try again in %s", masterURL, wait)
	case 503:
		return fmt.Errorf("%s: an admin must run that slave with an operator user (mas4h slave --operator-user)", msg)
	}
	return fmt.Errorf("asking the master at %s for %s/%s: %w", masterURL, device, forward, err)
}

// knownHostsPattern is how known_hosts names host:port.
func knownHostsPattern(host string, port int) string {
	if port == 22 || port == 0 {
		return host
	}
	return "[" + host + "]:" + strconv.Itoa(port)
}

// mergeKnownHosts returns known_hosts content with host:port's lines
// replaced by keys (the master vouches for its slaves' host keys; a slave
// that changed its key has a new one there), every other line kept.
func mergeKnownHosts(old []byte, host string, port int, keys []string) []byte {
	pat := knownHostsPattern(host, port)
	var out bytes.Buffer
	for line := range strings.Lines(string(old)) {
		if f := strings.Fields(line); len(f) > 0 && f[0] == pat {
			continue
		}
		out.WriteString(strings.TrimRight(line, "\n") + "\n")
	}
	for _, k := range keys {
		f := strings.Fields(k)
		if len(f) < 2 {
			continue
		}
		out.WriteString(pat + " " + f[0] + " " + f[1] + "\n")
	}
	return out.Bytes()
}

// pinSlave writes the slave's host keys from the master's answer to
// mas4h's own known_hosts (mode 0600), under a lock so that concurrent
// proxies (Ansible's forks) each add their slave's lines.
func pinSlave(dir string, a wire.Access) (string, error) {
	if len(a.HostKeys) == 0 {
		return "", fmt.Errorf("the master knows no host key of slave %s: it cannot be checked, so mas4h does not connect", a.Slave)
	}
	path := filepath.Join(dir, "known_hosts")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("pinning slave %s's host key: %w", a.Slave, err)
	}
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", fmt.Errorf("pinning slave %s's host key: %w", a.Slave, err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return "", fmt.Errorf("pinning slave %s's host key: locking %s: %w", a.Slave, lock.Name(), err)
	}
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("pinning slave %s's host key: %w", a.Slave, err)
	}
	if _, err := atomicfile.WriteIfChanged(path, mergeKnownHosts(old, a.Host, a.Port, a.HostKeys), 0o600); err != nil {
		return "", fmt.Errorf("pinning slave %s's host key: %w", a.Slave, err)
	}
	return path, nil
}

// operatorUserOpts are the ssh options that reach a slave's sshd as the operator
// user with the operator's key, checking the slave's host key against
// mas4h's known_hosts only.
func operatorUserOpts(a wire.Access, identityFile, knownHosts string) []string {
	opts := []string{"-p", strconv.Itoa(a.Port),
		"-o", "UserKnownHostsFile=" + knownHosts, "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes", "-o", "ForwardAgent=no", "-o", "ForwardX11=no"}
	if identityFile != "" {
		opts = append(opts, "-i", identityFile, "-o", "IdentitiesOnly=yes")
	}
	return append(opts, "-l", a.User)
}

// proxyArgv bridges ssh's stdin and stdout to the device's forward: a
// direct-tcpip channel to localhost:PORT on the slave, the one kind of
// channel the operator user may open.
func proxyArgv(a wire.Access, identityFile, knownHosts string) []string {
	argv := []string{"-W", "localhost:" + strconv.Itoa(a.RemotePort), "-o", "BatchMode=yes", "-o", "ClearAllForwardings=yes"}
	return append(append(argv, operatorUserOpts(a, identityFile, knownHosts)...), a.Host)
}

// loginArgv logs in to the device's own sshd through the slave: ssh's
// ProxyCommand is proxyArgv, the device's host key is checked under the
// alias mas4h-DEVICE in the operator's own known_hosts (whichever slave
// and port the tunnel comes through), and SSH_ARGS follow the device.
func loginArgv(sshPath string, a wire.Access, identityFile, knownHosts, user string, extra []string) []string {
	proxy := shellJoin(append([]string{sshPath}, proxyArgv(a, identityFile, knownHosts)...))
	argv := []string{"-o", "ProxyCommand=" + strings.ReplaceAll(proxy, "%", "%%"), "-o", "HostKeyAlias=" + deviceHostKeyAlias(a.Device)}
	if user != "" {
		argv = append(argv, "-l", user)
	}
	argv = append(argv, a.Device)
	return append(argv, extra...)
}

// deviceHostKeyAlias is the name a device's host key is known by.
func deviceHostKeyAlias(device string) string { return "mas4h-" + device }

// forwardArgv forwards 127.0.0.1:local to the device's forward through
// the slave, until interrupted.
func forwardArgv(a wire.Access, identityFile, knownHosts string, local int, extra []string) []string {
	argv := []string{"-N", "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes",
		"-L", fmt.Sprintf("127.0.0.1:%d:localhost:%d", local, a.RemotePort)}
	argv = append(append(argv, operatorUserOpts(a, identityFile, knownHosts)...), a.Host)
	return append(argv, extra...)
}

// localURL is how to open a forward's local port: a URL when the forward's
// name says web, else host:port.
func localURL(forward string, local int) string {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(local))
	switch {
	case strings.Contains(forward, "https") || strings.Contains(forward, "tls"):
		return "https://" + addr + "/"
	case strings.Contains(forward, "web") || strings.Contains(forward, "http") || strings.Contains(forward, "ui"):
		return "http://" + addr + "/"
	}
	return addr
}

func freeLocalPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free local port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// execSSH replaces this process with ssh, so the terminal, its signals
// and ssh's exit status are the operator's, as if they had typed it.
func execSSH(sshPath string, argv []string) error {
	path, err := exec.LookPath(sshPath)
	if err != nil {
		return fmt.Errorf("the OpenSSH client %q is not installed (apt-get install openssh-client): %w", sshPath, err)
	}
	if err := unix.Exec(path, append([]string{sshPath}, argv...), os.Environ()); err != nil {
		return fmt.Errorf("running %s: %w", path, err)
	}
	return nil // not reached
}

// shellJoin quotes argv for a POSIX shell: ProxyCommand and --dry-run.
func shellJoin(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./_-[]") == "" {
			out[i] = a
			continue
		}
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(out, " ")
}

// operatorSetup is what every operator command needs before asking for
// access: the master client (no token), the config directory, the keys.
func operatorSetup(of *operatorFlags, g *globals) (*client.Client, string, []identity, error) {
	u, err := of.url()
	if err != nil {
		return nil, "", nil, err
	}
	c, err := client.New(u, "", client.WithLogger(g.logger()))
	if err != nil {
		return nil, "", nil, usageError{err}
	}
	for _, cu := range c.Cleartext() {
		fmt.Fprintf(g.stderr, "warning: %s is plain http: your requests and the slaves' host keys the master sends cross the network unprotected; serve the master over https\n", cu)
	}
	dir, err := configDir()
	if err != nil {
		return nil, "", nil, err
	}
	ids, err := identities(of.key, dir)
	if err != nil {
		return nil, "", nil, err
	}
	return c, dir, ids, nil
}

// reach is what `mas4h ssh` and `mas4h proxy` do before ssh: ask the master
// where forward of device is (signed with the first of the operator's keys
// it accepts), and pin the slave's host keys; it returns the answer, the
// key that was accepted, and the known_hosts file to give ssh.
func reach(ctx context.Context, of *operatorFlags, g *globals, device, forward string) (wire.Access, identity, string, error) {
	c, dir, ids, err := operatorSetup(of, g)
	if err != nil {
		return wire.Access{}, identity{}, "", err
	}
	a, id, err := access(ctx, c, ids, device, forward)
	if err != nil {
		return wire.Access{}, identity{}, "", err
	}
	kh, err := pinSlave(dir, a)
	if err != nil {
		return wire.Access{}, identity{}, "", err
	}
	return a, id, kh, nil
}

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

type sshOpts struct {
	mf        masterFlags
	forward   string
	jumpUser  string
	jumpHost  string
	jumpPort  int
	localPort int
	sshPath   string
	dryRun    bool
}

func newSSHCmd(g *globals) *cobra.Command {
	o := &sshOpts{}
	cmd := &cobra.Command{
		Use:   "ssh [USER@]DEVICE [--forward NAME] [flags] [-- SSH_ARGS...]",
		Short: "Reach a device through the slave its tunnel is on",
		Long: `Ask the master where the device's tunnel lives and run the system's ssh
there. The device's forwards listen on the slave's loopback, so ssh goes
through the slave host's own (admin) sshd as a ProxyJump:

  ssh -J [JUMP_USER@]SLAVE_HOST[:JUMP_PORT] -p PORT [-l USER] localhost [SSH_ARGS...]

ssh runs with your own keys, agent and ~/.ssh/config: mas4h adds no identity
option. It only sets HostKeyAlias=mas4h-DEVICE, so known_hosts remembers the
device's host key by its name, whichever slave and port it comes through.
SSH_ARGS (after --) go to ssh as they are: options, then a command.

With --forward NAME, mas4h forwards a local port to that forward of the device
instead (ssh -N -L 127.0.0.1:LOCAL:localhost:PORT to the slave host), prints
the local address (a URL for web forwards) and keeps the forward up until
Ctrl-C.

The master comes from --master or MAS4H_MASTER and its admin token from
--token-file or MAS4H_TOKEN_FILE. Exit status: ssh's own, or 1 when the
device is unknown, revoked or offline.`,
		Example: `  mas4h ssh pi-kitchen
  mas4h ssh root@pi-kitchen -- uptime
  mas4h ssh pi-kitchen --jump-user admin --jump-port 2200 -- -A
  mas4h ssh nas --forward web          # prints http://127.0.0.1:PORT/`,
		Args: func(cmd *cobra.Command, args []string) error {
			n := cmd.ArgsLenAtDash()
			if !(n == -1 && len(args) == 1 || n == 1) {
				return usagef("mas4h ssh takes one device ([USER@]DEVICE), then -- and ssh's arguments")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			extra := []string{}
			if n := cmd.ArgsLenAtDash(); n >= 0 {
				extra = args[n:]
			}
			return o.run(cmd.Context(), g, args[0], extra)
		},
	}
	f := cmd.Flags()
	o.mf.add(f)
	f.StringVar(&o.forward, "forward", "", "forward a local port to this forward of the device (e.g. web) instead of logging in over its ssh forward")
	f.StringVar(&o.jumpUser, "jump-user", "", "user on the slave host's admin sshd (default: ssh's, i.e. yours or your ~/.ssh/config's)")
	f.StringVar(&o.jumpHost, "jump-host", "", "address of the slave host's admin sshd (default: the slave's public host)")
	f.IntVar(&o.jumpPort, "jump-port", 0, "port of the slave host's admin sshd (default: ssh's, i.e. 22 or your ~/.ssh/config's)")
	f.IntVar(&o.localPort, "local-port", 0, "local port for --forward (default: a free one)")
	f.StringVar(&o.sshPath, "ssh", "ssh", "the OpenSSH client to run")
	f.BoolVar(&o.dryRun, "dry-run", false, "print the ssh command instead of running it")
	return cmd
}

// sshRoute is where a device's forward can be reached.
type sshRoute struct {
	device  string
	forward wire.Forward
	slave   string
	host    string // the slave's public host
	port    int    // the forward's port on the slave's loopback
}

func (o *sshOpts) run(ctx context.Context, g *globals, arg string, extra []string) error {
	user, device := "", arg
	if i := strings.LastIndexByte(arg, '@'); i >= 0 {
		user, device = arg[:i], arg[i+1:]
		if user == "" || strings.HasPrefix(user, "-") {
			return usagef("bad user in %q", arg)
		}
	}
	if err := registry.ValidateDeviceName(device); err != nil {
		return usagef("device: %v", err)
	}
	if o.jumpPort < 0 || o.jumpPort > 65535 || o.localPort < 0 || o.localPort > 65535 {
		return usagef("--jump-port and --local-port must be 0-65535")
	}
	if strings.HasPrefix(o.jumpUser, "-") || strings.HasPrefix(o.jumpHost, "-") {
		return usagef("--jump-user and --jump-host must not start with '-'")
	}
	c, err := o.mf.client(g.stderr)
	if err != nil {
		return err
	}
	fwd := o.forward
	if fwd == "" {
		fwd = "ssh"
	}
	r, err := locate(ctx, c, device, fwd, o.forward == "")
	if err != nil {
		return err
	}
	host := r.host
	if o.jumpHost != "" {
		host = o.jumpHost
	}
	var argv []string
	if o.forward == "" {
		argv = sshJumpArgv(r, host, o.jumpUser, o.jumpPort, user, extra)
	} else {
		local := o.localPort
		if local == 0 && !o.dryRun {
			if local, err = freeLocalPort(); err != nil {
				return err
			}
		}
		argv = sshForwardArgv(r, host, o.jumpUser, o.jumpPort, local, extra)
		if !o.dryRun {
			fmt.Fprintf(g.stdout, "%s/%s is at %s (port %d on slave %s, through %s); Ctrl-C stops the forward\n",
				r.device, r.forward.Name, localURL(r.forward, local), r.port, r.slave, host)
		}
	}
	if o.dryRun {
		fmt.Fprintln(g.stdout, shellJoin(append([]string{o.sshPath}, argv...)))
		return nil
	}
	return execSSH(o.sshPath, argv)
}

// locate asks the master for the device, its forward, the live tunnel of
// that forward and the slave that holds it.
func locate(ctx context.Context, c *client.Client, device, forward string, defaulted bool) (sshRoute, error) {
	dev, err := c.Device(ctx, device)
	if client.StatusOf(err) == 404 {
		return sshRoute{}, fmt.Errorf("no device %q on the master at %s ('mas4h device list' shows the enrolled ones)", device, c.URL())
	}
	if err != nil {
		return sshRoute{}, err
	}
	if dev.Status != registry.StatusActive {
		return sshRoute{}, fmt.Errorf("device %s is %s: it cannot connect", device, dev.Status)
	}
	r := sshRoute{device: dev.Name}
	var names []string
	found := false
	for _, f := range dev.Forwards {
		names = append(names, f.Name)
		if f.Name == forward {
			r.forward, found = f, true
		}
	}
	if !found {
		hint := ""
		if defaulted {
			hint = "; pick one with --forward NAME"
		}
		return sshRoute{}, usagef("device %s has no forward %q (its forwards: %s)%s", device, forward, strings.Join(names, ", "), hint)
	}
	tunnels, err := c.Tunnels(ctx)
	if err != nil {
		return sshRoute{}, err
	}
	for _, t := range tunnels {
		if t.Device == dev.Name && (t.Forward == forward || t.Port == r.forward.RemotePort) {
			r.slave, r.port = t.Slave, t.Port
			break
		}
	}
	if r.slave == "" {
		last := ""
		if dev.Slave != "" {
			last = fmt.Sprintf("; it was last sent to slave %s", dev.Slave)
		}
		return sshRoute{}, fmt.Errorf("device %s is offline: no live tunnel for its %s forward%s ('mas4h tunnels' lists the live ones)", device, forward, last)
	}
	st, err := c.Status(ctx)
	if err != nil {
		return sshRoute{}, err
	}
	for _, s := range st.Slaves {
		if s.Name == r.slave {
			if !s.Alive {
				return sshRoute{}, fmt.Errorf("device %s's tunnel is on slave %s, which is not alive", device, r.slave)
			}
			r.host = s.Host
		}
	}
	if r.host == "" {
		return sshRoute{}, fmt.Errorf("slave %s, which holds device %s's tunnel, is not in the master's status", r.slave, device)
	}
	return r, nil
}

// jumpSpec is ProxyJump's [user@]host[:port].
func jumpSpec(host, user string, port int) string {
	s := host
	if port > 0 {
		s = net.JoinHostPort(host, strconv.Itoa(port))
	} else if strings.Contains(host, ":") {
		s = "[" + host + "]"
	}
	if user != "" {
		s = user + "@" + s
	}
	return s
}

// sshJumpArgv logs in to the device's ssh forward through the slave host:
// "localhost" is resolved by the jump host, where the forward listens.
func sshJumpArgv(r sshRoute, host, jumpUser string, jumpPort int, user string, extra []string) []string {
	argv := []string{"-J", jumpSpec(host, jumpUser, jumpPort), "-p", strconv.Itoa(r.port),
		"-o", "HostKeyAlias=mas4h-" + r.device}
	if user != "" {
		argv = append(argv, "-l", user)
	}
	argv = append(argv, "localhost")
	return append(argv, extra...)
}

// sshForwardArgv forwards 127.0.0.1:local to the forward's port on the
// slave host's loopback.
func sshForwardArgv(r sshRoute, host, jumpUser string, jumpPort, local int, extra []string) []string {
	argv := []string{"-N", "-o", "ExitOnForwardFailure=yes",
		"-L", fmt.Sprintf("127.0.0.1:%d:localhost:%d", local, r.port)}
	if jumpPort > 0 {
		argv = append(argv, "-p", strconv.Itoa(jumpPort))
	}
	if jumpUser != "" {
		argv = append(argv, "-l", jumpUser)
	}
	argv = append(argv, host)
	return append(argv, extra...)
}

// localURL is how to open a forwarded port: a URL for what looks like a
// web UI (an http probe, or a usual web port), else host:port.
func localURL(f wire.Forward, local int) string {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(local))
	_, port, _ := net.SplitHostPort(f.Target)
	switch {
	case port == "443" || port == "8443":
		return "https://" + addr + "/"
	case strings.HasPrefix(f.Probe, "http") || port == "80" || port == "8000" || port == "8080" || port == "8888" || port == "3000":
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

// shellJoin quotes argv for a POSIX shell, for --dry-run.
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

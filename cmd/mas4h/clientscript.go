package main

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/agent"
	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/templates"
)

// clientScript is what templates/client.sh.tmpl is rendered from. The
// shell-bound values are already single-quoted.
type clientScript struct {
	Version   string
	Device    string // validated device name, or ""
	Install   string // quoted: openwrt, systemd, cron or ''
	Master    string // quoted
	Key       string // quoted
	StateDir  string // quoted
	SSHClient string // quoted
}

var safePathRE = regexp.MustCompile(`^/[A-Za-z0-9._/+-]*$`)

type clientScriptFlags struct {
	master, device, install, key, stateDir, sshClient string
}

func (f clientScriptFlags) render() (string, error) {
	if f.master == "" {
		return "", usagef("--master is required")
	}
	if _, err := client.New(f.master, ""); err != nil {
		return "", usageError{err}
	}
	if strings.ContainsAny(f.master, "'\"\\`${} \t\n") {
		return "", usagef("--master %q: quotes, braces, $ and spaces are not allowed", f.master)
	}
	if f.device != "" {
		if err := registry.ValidateDeviceName(f.device); err != nil {
			return "", usageError{err}
		}
	}
	switch f.install {
	case "", "openwrt", "systemd", "cron":
	default:
		return "", usagef("--install must be openwrt, systemd or cron, not %q", f.install)
	}
	switch f.sshClient {
	case agent.ClientAuto, agent.ClientOpenSSH, agent.ClientDropbear:
	default:
		return "", usagef("--ssh-client must be auto, openssh or dropbear, not %q", f.sshClient)
	}
	if f.key == "" {
		f.key = "/etc/mas4h/key"
	}
	if f.stateDir == "" {
		f.stateDir = "/var/lib/mas4h-client"
		if f.install == "openwrt" {
			f.stateDir = "/etc/mas4h/state" // /var is a tmpfs on OpenWrt
		}
	}
	for flag, p := range map[string]string{"--key": f.key, "--state-dir": f.stateDir} {
		if !safePathRE.MatchString(p) {
			return "", usagef("%s %q must be an absolute path of letters, digits and . _ / + -", flag, p)
		}
	}
	t, err := templates.Parse("client.sh.tmpl")
	if err != nil {
		return "", err
	}
	var b strings.Builder
	err = t.Execute(&b, clientScript{
		Version: strings.Join(strings.Fields(version), " "), Device: f.device, Install: shQuote(f.install),
		Master: shQuote(f.master), Key: shQuote(f.key), StateDir: shQuote(f.stateDir), SSHClient: shQuote(f.sshClient),
	})
	if err != nil {
		return "", fmt.Errorf("rendering the client script: %w", err)
	}
	return b.String(), nil
}

// shQuote single-quotes s for sh.
func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func newClientScriptCmd(g *globals) *cobra.Command {
	var f clientScriptFlags
	cmd := &cobra.Command{
		Use:   "client-script --master URL [--device NAME] [--install openwrt|systemd|cron] [--key PATH] [--ssh-client auto|openssh|dropbear]",
		Short: "Print a POSIX sh client for devices that can take no binary (OpenWrt, busybox)",
		Long: `Print a POSIX sh script (busybox ash is enough) that keeps a device's tunnel
up with only ssh or dbclient and curl or wget: the agent's loop, backoff,
host-key pinning and last-slot fallback, reading the slot through
POST /api/v1/slots?format=env (parsed line by line, never sourced).

  mas4h client-script --master https://master:8080 --device ap-17 --install openwrt > mas4h-client.sh
  scp mas4h-client.sh root@ap-17:/tmp/ && ssh root@ap-17 'sh /tmp/mas4h-client.sh keygen'
  mas4h device add ap-17 --key -     # paste the printed public key
  ssh root@ap-17 'sh /tmp/mas4h-client.sh install'`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := f.render()
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(g.stdout, s)
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.master, "master", "", "the master's URL as the device reaches it")
	fl.StringVar(&f.device, "device", "", "the device's name (for the script's comments and hints)")
	fl.StringVar(&f.install, "install", "", "the service kind `install` sets up: openwrt (procd), systemd or cron")
	fl.StringVar(&f.key, "key", "", "the device key's path on the device (default /etc/mas4h/key)")
	fl.StringVar(&f.stateDir, "state-dir", "", "the script's state dir on the device (default /var/lib/mas4h-client, /etc/mas4h/state on OpenWrt)")
	fl.StringVar(&f.sshClient, "ssh-client", agent.ClientAuto, "auto, openssh or dropbear")
	return cmd
}

// Package agentflags defines the device agent's flags once, for both of its
// commands: `mas4h agent` (cobra's pflag) and the static mas4h-agent (the
// standard library's flag, to stay small).
package agentflags

import (
	"time"

	"github.com/mas4h/mas4h/agent"
)

// FlagSet is what flag.FlagSet and pflag.FlagSet both have.
type FlagSet interface {
	StringVar(p *string, name, value, usage string)
	BoolVar(p *bool, name string, value bool, usage string)
	DurationVar(p *time.Duration, name string, value time.Duration, usage string)
}

// Add defines the agent's flags on fs, to fill cfg. A `word` in a usage
// is the name of the flag's value in --help.
func Add(fs FlagSet, cfg *agent.Config) {
	fs.StringVar(&cfg.Master, "master", "", "the master's `URL`, e.g. https://master.example:8080, or several masters of one fleet as URL,URL,... (tried in a random order; a slot from any is good)")
	fs.StringVar(&cfg.MasterCA, "master-ca", "", "PEM `file` of the CA (or the master's self-signed certificate; with several masters, all their certificates in one file) to trust for the master instead of the system's")
	fs.BoolVar(&cfg.InsecureHTTP, "insecure-http", false, "allow an http:// master (clear text: whoever is on the path can redirect the tunnel); warned at every start")
	fs.StringVar(&cfg.KeyPath, "key", "", "the device's private key `file` (OpenSSH, PEM or dropbear format, mode 0600)")
	fs.StringVar(&cfg.StateDir, "state-dir", agent.DefaultStateDir, "`dir` for the last slot, known_hosts and converted keys")
	fs.StringVar(&cfg.SSHClient, "ssh-client", agent.ClientAuto, "the SSH `client` to run: auto, openssh or dropbear")
	fs.DurationVar(&cfg.Keepalive, "keepalive", 0, "keepalive `interval`; the client gives up after 3 unanswered (default 10s)")
	fs.DurationVar(&cfg.ConnectTimeout, "connect-timeout", 0, "`timeout` of the master call and of OpenSSH's connect (default 15s)")
}

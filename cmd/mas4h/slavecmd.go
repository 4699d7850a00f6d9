package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/master/token"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/names"
)

// The admin's slave commands, against the master: 'mas4h slave add|list|
// rm|accept-key'. 'mas4h slave' itself runs a slave (slave.go).

// slaveAdminCmds are the subcommands of 'mas4h slave'.
func slaveAdminCmds(g *globals) []*cobra.Command {
	return []*cobra.Command{newSlaveAddCmd(g), newSlaveListCmd(g), newSlaveRmCmd(g), newSlaveAcceptKeyCmd(g)}
}

func slaveNameArg(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return usagef("%s takes the slave's name (got %d arguments)", cmd.CommandPath(), len(args))
	}
	if err := names.Slave(args[0]); err != nil {
		return usageError{err}
	}
	return nil
}

func newSlaveAddCmd(g *globals) *cobra.Command {
	var mf masterFlags
	var out, output string
	cmd := &cobra.Command{
		Use:   "add NAME [--token-file-out FILE] --master URL --token-file ADMIN_TOKEN_FILE",
		Short: "Issue a slave its own credential (again: a new one, and the old stops working)",
		Long: `Ask the master for a credential for slave NAME, for that slave alone: with it
the slave can heartbeat, validate keys and follow revocations in its own name
and no other. The master keeps only a hash of it, so it is shown this once:
printed, or written to --token-file-out (mode 0600). Copy it to the slave
(mode 0600) and pass it as 'mas4h slave --token-file FILE'.

The first heartbeat with a new credential binds the host keys the slave
presents to its name; after that, other host keys are refused until an admin
accepts them ('mas4h slave accept-key NAME') or adds the slave again.

Adding a slave that has a credential issues a new one; the old one stops
working at once.`,
		Example: `  mas4h slave add s1 --token-file-out s1.token --master https://master:8080 --token-file /var/lib/mas4h/master/admin.token
  scp s1.token root@s1:/etc/mas4h/slave-s1.token`,
		Args: slaveNameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			format, err := parseOutput(output)
			if err != nil {
				return err
			}
			if out != "" {
				if err := checkCredentialOut(out, name); err != nil {
					return err
				}
			}
			c, err := mf.client(g)
			if err != nil {
				return err
			}
			sc, err := c.AddSlave(cmd.Context(), name)
			if err != nil {
				return err
			}
			if sc.Replaced {
				fmt.Fprintf(g.stderr, "slave %s had a credential: it no longer works; give the slave this one\n", name)
			}
			if out != "" {
				if err := token.Write(out, sc.Credential); err != nil {
					return fmt.Errorf("the master issued slave %s a new credential, but %w; run 'mas4h slave add %s' again", name, err, name)
				}
				if format == "json" {
					sc.Credential = ""
					return writeJSON(g.stdout, struct {
						wire.SlaveCredential
						File string `json:"file"`
					}{sc, out})
				}
				fmt.Fprintf(g.stdout, "wrote slave %s's credential to %s (mode 0600); copy it to the slave and pass --token-file FILE\n", name, out)
				return nil
			}
			if format == "json" {
				return writeJSON(g.stdout, sc)
			}
			fmt.Fprintf(g.stderr, "slave %s's credential (shown once: the master keeps only its hash); put it in a file of mode 0600 on the slave and pass --token-file FILE:\n", name)
			fmt.Fprintln(g.stdout, sc.Credential)
			return nil
		},
	}
	mf.add(cmd.Flags())
	cmd.Flags().StringVar(&out, "token-file-out", "", "write the credential to this file (mode 0600) instead of printing it")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

// checkCredentialOut refuses, before the master is asked, to write the
// credential where it would destroy something: an existing file may be
// replaced only if it holds an earlier credential of the same slave.
func checkCredentialOut(path, name string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		dir := filepath.Dir(path)
		if di, err := os.Stat(dir); err != nil || !di.IsDir() {
			return usagef("--token-file-out: directory %s does not exist", dir)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("--token-file-out: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return usagef("--token-file-out: %s exists and is not a regular file", path)
	}
	tok, err := token.Load(path)
	if n, _, ok := token.ParseSlaveCredential(tok); err != nil || !ok || n != name {
		return usagef("--token-file-out: %s exists and is not slave %s's credential; remove it or choose another file", path, name)
	}
	return nil
}

func newSlaveListCmd(g *globals) *cobra.Command {
	var mf masterFlags
	var output string
	cmd := &cobra.Command{
		Use:   "list [-o table|json] --master URL --token-file ADMIN_TOKEN_FILE",
		Short: "List slaves: their credentials, host keys, and keys waiting to be accepted",
		Long: `List the slaves the master knows, by credential or by heartbeat. CREDENTIAL is
"own" (issued and in use), "issued" (not used by a heartbeat yet) or "none"
(the slave can speak only through the shared slave token; "none, shared" when
this master has seen it do so since it started). HOST KEYS are the
fingerprints bound to its name; PENDING are other host keys a heartbeat in
its name presented and was refused for ('mas4h slave accept-key').`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			format, err := parseOutput(output)
			if err != nil {
				return err
			}
			c, err := mf.client(g)
			if err != nil {
				return err
			}
			list, err := c.Slaves(cmd.Context())
			if err != nil {
				return err
			}
			if format == "json" {
				return writeJSON(g.stdout, list)
			}
			if len(list) == 0 {
				fmt.Fprintln(g.stdout, "no slave yet: add one with 'mas4h slave add NAME'")
				return nil
			}
			return writeTable(g.stdout, slaveRows(list, time.Now()))
		},
	}
	mf.add(cmd.Flags())
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

func slaveRows(list []wire.Slave, now time.Time) [][]string {
	rows := [][]string{{"SLAVE", "CREDENTIAL", "ALIVE", "ADDRESS", "LAST SEEN", "HOST KEYS", "PENDING"}}
	for _, s := range list {
		cred := s.Credential
		if s.SharedToken {
			cred += ", shared"
		}
		alive, addr, seen := "-", "-", "never"
		if s.Registered {
			alive = map[bool]string{true: "yes", false: "no"}[s.Alive]
			addr = net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
		}
		if s.LastSeen != nil {
			seen = ago(now, *s.LastSeen)
		}
		pending := "-"
		if len(s.PendingHostKeys) > 0 || s.PendingSince != nil {
			pending = keysSummary(s.PendingHostKeys)
			if s.PendingSince != nil {
				pending += " (" + ago(now, *s.PendingSince) + ")"
			}
		}
		rows = append(rows, []string{s.Name, cred, alive, addr, seen, keysSummary(s.HostKeys), pending})
	}
	return rows
}

func keysSummary(fps []string) string {
	switch len(fps) {
	case 0:
		return "-"
	case 1:
		return fps[0]
	}
	return strings.Join(fps, ",")
}

func newSlaveRmCmd(g *globals) *cobra.Command {
	var mf masterFlags
	cmd := &cobra.Command{
		Use:   "rm NAME --master URL --token-file ADMIN_TOKEN_FILE",
		Short: "Withdraw a slave's credential and forget it",
		Long: `Withdraw slave NAME's credential and forget the slave: its next request is
refused, no device is sent to it any more, and its tunnels leave the
master's view (the tunnels themselves run on the slave until it stops).`,
		Args: slaveNameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := mf.client(g)
			if err != nil {
				return err
			}
			if err := c.RemoveSlave(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "removed slave %s: its credential no longer works\n", args[0])
			return nil
		},
	}
	mf.add(cmd.Flags())
	return cmd
}

func newSlaveAcceptKeyCmd(g *globals) *cobra.Command {
	var mf masterFlags
	var fps []string
	cmd := &cobra.Command{
		Use:   "accept-key NAME [--fingerprint SHA256:...]... --master URL --token-file ADMIN_TOKEN_FILE",
		Short: "Accept the new host keys a slave presented (after it was rebuilt or its keys rotated)",
		Long: `A slave's host keys are bound to its name: a heartbeat presenting others is
refused (an event slave-key-mismatch, and mas4h_slave_host_key_mismatches_total)
and they wait as pending ('mas4h slave list'). accept-key binds the pending
keys to the slave, whose next heartbeat is then heard, and devices are told
to pin them.

Someone else holding the slave's credential could have presented them: read
the keys on the slave's host first (ssh-keygen -lf STATE_DIR/ssh_host_*_key.pub)
and pass their fingerprints with --fingerprint; then nothing is accepted
unless the pending keys are exactly those.`,
		Example: `  mas4h slave accept-key s1 --fingerprint SHA256:3q2+7w... --master https://master:8080 --token-file admin.token`,
		Args:    slaveNameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, fp := range fps {
				if !strings.HasPrefix(fp, "SHA256:") {
					return usagef("--fingerprint must be SHA256:... as ssh-keygen -l shows it, not %q", fp)
				}
			}
			c, err := mf.client(g)
			if err != nil {
				return err
			}
			acc, err := c.AcceptSlaveKey(cmd.Context(), args[0], fps)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "slave %s: host keys %s accepted\n", acc.Name, strings.Join(acc.HostKeys, ", "))
			return nil
		},
	}
	mf.add(cmd.Flags())
	cmd.Flags().StringArrayVar(&fps, "fingerprint", nil, "accept only if the pending host keys are exactly these (repeat for each key)")
	return cmd
}

package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

func newOperatorCmd(g *globals) *cobra.Command {
	o := &deviceOpts{g: g}
	cmd := &cobra.Command{
		Use:   "operator",
		Short: "Enrol operators (people) and say which devices each may reach",
		Long: `Manage operators: people who reach devices with 'mas4h ssh', plain ssh, scp,
rsync or Ansible, through the slave's own sshd as the operator user. Each has
one SSH public key (never a device's) and an allow list of selectors, OR'ed:
a device name glob (pi-*) or a label (site=lyon). An operator reaches exactly
the devices its allow list selects, and every access is an event.

Revoking or removing an operator, or denying it a selector, ends its live
sessions on every slave within one heartbeat.

Against a master (--master URL or $MAS4H_MASTER, with its admin token file from
--token-file or $MAS4H_TOKEN_FILE), or directly on a local registry file (--db
PATH). Output is the same either way.`,
	}
	cmd.PersistentFlags().StringVar(&o.db, "db", "", "local registry file (SQLite), e.g. /var/lib/mas4h/registry.db")
	o.mf.add(cmd.PersistentFlags())
	cmd.PersistentFlags().StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	cmd.AddCommand(newOperatorAddCmd(g, o), newOperatorListCmd(g, o), newOperatorShowCmd(g, o),
		newOperatorAllowCmd(g, o, true), newOperatorAllowCmd(g, o, false),
		newOperatorRevokeCmd(g, o), newOperatorRmCmd(g, o))
	return cmd
}

// operatorBackend is where operator commands act: a local registry file
// or a master's API, both answering with the API's shapes.
type operatorBackend interface {
	add(ctx context.Context, name string, key ssh.PublicKey, allow []string) (wire.Operator, error)
	list(ctx context.Context) ([]wire.Operator, error)
	show(ctx context.Context, name string) (wire.Operator, error)
	allow(ctx context.Context, name, sel string, add bool) (wire.Operator, error)
	revoke(ctx context.Context, name string) (wire.Operator, error)
	remove(ctx context.Context, name string) error
}

// withOperators opens the backend o's flags name and runs fn.
func (o *deviceOpts) withOperators(ctx context.Context, create bool, fn func(operatorBackend, outputFormat) error) error {
	return o.withBackend(ctx, create, func(b deviceBackend, f outputFormat) error {
		switch b := b.(type) {
		case localBackend:
			return fn(localOperators(b), f)
		case masterBackend:
			return fn(masterOperators(b), f)
		default:
			return fmt.Errorf("no operator backend for %T", b)
		}
	})
}

type localOperators struct{ st *registry.Store }

// withDevices is o as the API shows it, with the devices it reaches.
func (b localOperators) withDevices(ctx context.Context, o registry.Operator, err error) (wire.Operator, error) {
	if err != nil {
		return wire.Operator{}, err
	}
	w := o.Wire()
	devs, err := b.st.OperatorDevices(ctx, o)
	if err != nil {
		return wire.Operator{}, err
	}
	for _, d := range devs {
		w.Devices = append(w.Devices, d.Name)
	}
	return w, nil
}

func (b localOperators) add(ctx context.Context, name string, key ssh.PublicKey, allow []string) (wire.Operator, error) {
	o, err := b.st.AddOperator(ctx, name, key, allow)
	return b.withDevices(ctx, o, err)
}

func (b localOperators) list(ctx context.Context) ([]wire.Operator, error) {
	ops, err := b.st.Operators(ctx)
	out := make([]wire.Operator, len(ops))
	for i, o := range ops {
		out[i] = o.Wire()
	}
	return out, err
}

func (b localOperators) show(ctx context.Context, name string) (wire.Operator, error) {
	o, err := b.st.Operator(ctx, name)
	return b.withDevices(ctx, o, err)
}

func (b localOperators) allow(ctx context.Context, name, sel string, add bool) (wire.Operator, error) {
	if add {
		o, err := b.st.AllowOperator(ctx, name, sel)
		return b.withDevices(ctx, o, err)
	}
	o, err := b.st.DenyOperator(ctx, name, sel)
	return b.withDevices(ctx, o, err)
}

func (b localOperators) revoke(ctx context.Context, name string) (wire.Operator, error) {
	o, err := b.st.RevokeOperator(ctx, name)
	return b.withDevices(ctx, o, err)
}

func (b localOperators) remove(ctx context.Context, name string) error {
	return b.st.RemoveOperator(ctx, name)
}

type masterOperators struct{ c *client.Client }

func (b masterOperators) add(ctx context.Context, name string, key ssh.PublicKey, allow []string) (wire.Operator, error) {
	return b.c.AddOperator(ctx, wire.OperatorSpec{Name: name, PublicKey: registry.AuthorizedKey(key), Allow: allow})
}

func (b masterOperators) list(ctx context.Context) ([]wire.Operator, error) {
	return b.c.Operators(ctx)
}

func (b masterOperators) show(ctx context.Context, name string) (wire.Operator, error) {
	return b.c.Operator(ctx, name)
}

func (b masterOperators) allow(ctx context.Context, name, sel string, add bool) (wire.Operator, error) {
	if add {
		return b.c.Allow(ctx, name, sel)
	}
	return b.c.Deny(ctx, name, sel)
}

func (b masterOperators) revoke(ctx context.Context, name string) (wire.Operator, error) {
	return b.c.RevokeOperator(ctx, name)
}

func (b masterOperators) remove(ctx context.Context, name string) error {
	return b.c.RemoveOperator(ctx, name)
}

// operatorName checks the NAME argument before anything is opened.
func operatorName(name string) error {
	if err := registry.ValidateOperatorName(name); err != nil {
		return usageError{err}
	}
	return nil
}

func newOperatorAddCmd(g *globals, o *deviceOpts) *cobra.Command {
	var keyFile string
	var allow []string
	cmd := &cobra.Command{
		Use:   "add NAME --key FILE|- [--allow SEL]...",
		Short: "Enrol an operator with its public key and allow list",
		Example: `  mas4h operator add alice --key alice.pub --allow site=lyon --allow 'pi-*'
  mas4h operator add bob --key - --allow role=router < bob.pub`,
		Args: exactArgs(1, "one operator NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := operatorName(name); err != nil {
				return err
			}
			if keyFile == "" {
				return usagef("--key is required: the operator's public key file (e.g. ~/.ssh/id_ed25519.pub), or - for stdin")
			}
			if _, err := registry.ParseSelectors(allow); err != nil {
				return usageError{err}
			}
			data, err := readKeyInput(keyFile, cmd.InOrStdin())
			if err != nil {
				return err
			}
			key, err := registry.ParsePublicKey(data)
			if err != nil {
				return fmt.Errorf("key %s: %w", keyFile, err)
			}
			return o.withOperators(cmd.Context(), true, func(b operatorBackend, f outputFormat) error {
				op, err := b.add(cmd.Context(), name, key, allow)
				if err != nil {
					return err
				}
				return printOperator(g.stdout, op, f)
			})
		},
	}
	cmd.Flags().StringVar(&keyFile, "key", "", "the operator's public key file, or - to read it from stdin")
	cmd.Flags().StringArrayVar(&allow, "allow", nil, "a selector of devices it may reach: a name glob (pi-*) or a label (site=lyon); repeatable, OR'ed")
	return cmd
}

func newOperatorListCmd(g *globals, o *deviceOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List operators and their allow lists",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.withOperators(cmd.Context(), false, func(b operatorBackend, f outputFormat) error {
				ops, err := b.list(cmd.Context())
				if err != nil {
					return err
				}
				if f == "json" {
					if ops == nil {
						ops = []wire.Operator{}
					}
					return writeJSON(g.stdout, ops)
				}
				rows := [][]string{{"NAME", "STATUS", "ALLOW", "FINGERPRINT"}}
				for _, op := range ops {
					rows = append(rows, []string{op.Name, op.Status, allowSummary(op.Allow), op.Fingerprint})
				}
				return writeTable(g.stdout, rows)
			})
		},
	}
}

func newOperatorShowCmd(g *globals, o *deviceOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show an operator and the devices it may reach today",
		Args:  exactArgs(1, "one operator NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.withOperators(cmd.Context(), false, func(b operatorBackend, f outputFormat) error {
				op, err := b.show(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				return printOperator(g.stdout, op, f)
			})
		},
	}
}

func newOperatorAllowCmd(g *globals, o *deviceOpts, add bool) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "allow NAME SEL",
		Short: "Add a selector (pi-*, site=lyon) to an operator's allow list",
		Args:  exactArgs(2, "an operator NAME and a selector SEL"),
	}
	if !add {
		cmd.Use = "deny NAME SEL"
		cmd.Short = "Take a selector off an operator's allow list and end its live sessions"
		cmd.Long = `Take a selector off an operator's allow list. Its live sessions end on every
slave (within one heartbeat); its next login opens what it may still reach. A
selector that is not on the list is an error, so a typo does not pass for a
denial.`
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := operatorName(args[0]); err != nil {
			return err
		}
		if _, err := registry.ParseSelector(args[1]); err != nil {
			return usageError{err}
		}
		return o.withOperators(cmd.Context(), false, func(b operatorBackend, f outputFormat) error {
			op, err := b.allow(cmd.Context(), args[0], args[1], add)
			if err != nil {
				return err
			}
			return printOperator(g.stdout, op, f)
		})
	}
	return cmd
}

func newOperatorRevokeCmd(g *globals, o *deviceOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke NAME",
		Short: "Refuse an operator's key from now on and end its live sessions",
		Long: `Revoke an operator: its key opens nothing any more, POST /access refuses it,
and slaves end its live sessions (within one heartbeat under a master). The
operator stays in the registry, with its events; "rm" deletes it.`,
		Args: exactArgs(1, "one operator NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.withOperators(cmd.Context(), false, func(b operatorBackend, f outputFormat) error {
				op, err := b.revoke(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				return printOperator(g.stdout, op, f)
			})
		},
	}
}

func newOperatorRmCmd(g *globals, o *deviceOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove an operator and end its live sessions",
		Args:  exactArgs(1, "one operator NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.withOperators(cmd.Context(), false, func(b operatorBackend, f outputFormat) error {
				if err := b.remove(cmd.Context(), args[0]); err != nil {
					return err
				}
				if f == "json" {
					return writeJSON(g.stdout, wire.Removed{Removed: args[0]})
				}
				fmt.Fprintf(g.stdout, "removed %s\n", args[0])
				return nil
			})
		},
	}
}

func allowSummary(allow []string) string {
	if len(allow) == 0 {
		return "-"
	}
	return strings.Join(allow, ",")
}

func printOperator(w io.Writer, op wire.Operator, f outputFormat) error {
	if f == "json" {
		if op.Allow == nil {
			op.Allow = []string{}
		}
		return writeJSON(w, op)
	}
	devices := "-"
	if len(op.Devices) > 0 {
		devices = strings.Join(op.Devices, ", ")
	}
	return writeTable(w, [][]string{
		{"name:", op.Name},
		{"status:", op.Status},
		{"key:", op.Fingerprint},
		{"allow:", allowSummary(op.Allow)},
		{"reaches:", devices},
		{"created:", op.CreatedAt.Format("2006-01-02 15:04:05Z07:00")},
	})
}

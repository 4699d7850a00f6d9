package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// deviceOpts are the flags shared by the device subcommands.
type deviceOpts struct {
	db     string
	mf     masterFlags
	output string
	g      *globals // warnings and logs
}

func newDeviceCmd(g *globals) *cobra.Command {
	o := &deviceOpts{g: g}
	cmd := &cobra.Command{
		Use:   "device",
		Short: "Enrol, list, show, label, revoke and remove devices",
		Long: `Manage enrolled devices. Each device has one SSH public key and one or more
forwards; each forward leases a remote port on the slaves, stable for the
device's life, and labels (K=V, e.g. site=lyon) that operators' allow lists
select devices by.

Against a master (--master URL or $MAS4H_MASTER, with its admin token file from
--token-file or $MAS4H_TOKEN_FILE), or directly on a local registry file (--db
PATH). Output is the same either way.`,
	}
	cmd.PersistentFlags().StringVar(&o.db, "db", "", "local registry file (SQLite), e.g. /var/lib/mas4h/registry.db")
	o.mf.add(cmd.PersistentFlags())
	cmd.PersistentFlags().StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	cmd.AddCommand(newDeviceAddCmd(g, o), newDeviceListCmd(g, o), newDeviceShowCmd(g, o),
		newDeviceLabelCmd(g, o), newDeviceRevokeCmd(g, o), newDeviceRmCmd(g, o))
	return cmd
}

// deviceBackend is where device commands act: a local registry file or a
// master's API. Both answer with the API's shapes, so output is identical.
type deviceBackend interface {
	add(ctx context.Context, name string, key ssh.PublicKey, specs []registry.ForwardSpec, labels map[string]string, pr registry.PortRange) (wire.Device, error)
	list(ctx context.Context, sels []registry.Selector) ([]wire.Device, error)
	label(ctx context.Context, name string, set map[string]string, remove []string) (wire.Device, error)
	show(ctx context.Context, name string) (wire.Device, error)
	revoke(ctx context.Context, name string) (wire.Device, error)
	remove(ctx context.Context, name string) error
}

// remote reports whether the commands go to a master: --master, or
// $MAS4H_MASTER unless --db is given (a flag beats the environment).
func (o *deviceOpts) remote() (bool, error) {
	if o.db != "" && o.mf.master != "" {
		return false, usagef("give --master URL or --db PATH, not both")
	}
	if o.db != "" {
		return false, nil
	}
	if o.mf.url() != "" {
		return true, nil
	}
	return false, usagef("no registry given: pass --master URL with --token-file FILE (or set MAS4H_MASTER and MAS4H_TOKEN_FILE), or --db PATH for a local registry file")
}

// withBackend validates the shared flags, opens the backend and runs fn.
// Only "add" may create a new registry file; the others refuse a missing one
// rather than answer from an empty file created by a typo.
func (o *deviceOpts) withBackend(ctx context.Context, create bool, fn func(deviceBackend, outputFormat) error) error {
	format, err := parseOutput(o.output)
	if err != nil {
		return err
	}
	remote, err := o.remote()
	if err != nil {
		return err
	}
	if remote {
		c, err := o.mf.client(o.g)
		if err != nil {
			return err
		}
		return fn(masterBackend{c}, format)
	}
	if _, err := os.Stat(o.db); !create && errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("registry %s does not exist (enrol a device with 'mas4h device add' to create it)", o.db)
	}
	st, err := registry.Open(ctx, o.db)
	if err != nil {
		return err
	}
	defer st.Close()
	return fn(localBackend{st}, format)
}

type localBackend struct{ st *registry.Store }

func (b localBackend) add(ctx context.Context, name string, key ssh.PublicKey, specs []registry.ForwardSpec, labels map[string]string, pr registry.PortRange) (wire.Device, error) {
	d, _, err := b.st.EnrolDevice(ctx, name, key, specs, labels, pr, "")
	return d.Wire(), err
}

func (b localBackend) label(ctx context.Context, name string, set map[string]string, remove []string) (wire.Device, error) {
	d, err := b.st.SetDeviceLabels(ctx, name, set, remove)
	return d.Wire(), err
}

func (b localBackend) list(ctx context.Context, sels []registry.Selector) ([]wire.Device, error) {
	devs, err := b.st.DevicesMatching(ctx, sels)
	out := make([]wire.Device, len(devs))
	for i, d := range devs {
		out[i] = d.Wire()
	}
	return out, err
}

func (b localBackend) show(ctx context.Context, name string) (wire.Device, error) {
	d, err := b.st.Device(ctx, name)
	return d.Wire(), err
}

func (b localBackend) revoke(ctx context.Context, name string) (wire.Device, error) {
	d, err := b.st.Revoke(ctx, name)
	return d.Wire(), err
}

func (b localBackend) remove(ctx context.Context, name string) error { return b.st.Remove(ctx, name) }

type masterBackend struct{ c *client.Client }

// add sends the specs as parsed here, rendered: the master reads them back
// the same (registry's FuzzParseForwardSpec holds it to that).
func (b masterBackend) add(ctx context.Context, name string, key ssh.PublicKey, specs []registry.ForwardSpec, labels map[string]string, _ registry.PortRange) (wire.Device, error) {
	var forwards []string
	for _, s := range specs {
		forwards = append(forwards, s.String())
	}
	return b.c.AddDevice(ctx, wire.AddDeviceRequest{Name: name, PublicKey: registry.AuthorizedKey(key), Forwards: forwards, Labels: labels})
}

func (b masterBackend) label(ctx context.Context, name string, set map[string]string, remove []string) (wire.Device, error) {
	return b.c.SetLabels(ctx, name, wire.Labels{Set: set, Remove: remove})
}

func (b masterBackend) list(ctx context.Context, sels []registry.Selector) ([]wire.Device, error) {
	raw := make([]string, len(sels))
	for i, s := range sels {
		raw[i] = s.String()
	}
	return b.c.DevicesMatching(ctx, raw...)
}

func (b masterBackend) show(ctx context.Context, name string) (wire.Device, error) {
	return b.c.Device(ctx, name)
}

func (b masterBackend) revoke(ctx context.Context, name string) (wire.Device, error) {
	return b.c.RevokeDevice(ctx, name)
}

func (b masterBackend) remove(ctx context.Context, name string) error {
	return b.c.RemoveDevice(ctx, name)
}

func newDeviceAddCmd(g *globals, o *deviceOpts) *cobra.Command {
	var keyFile, portRange string
	var forwards, labels []string
	cmd := &cobra.Command{
		Use:   "add NAME --key FILE|- [--forward NAME=HOST:PORT[,probe=SPEC]]... [--label K=V]...",
		Short: "Enrol a device with its public key and lease its ports",
		Example: `  mas4h device add pi-kitchen --key pi-kitchen.pub --master http://127.0.0.1:8080 --token-file admin.token
  mas4h device add pi-kitchen --key pi-kitchen.pub --db /var/lib/mas4h/registry.db
  mas4h device add nas --key - --forward ssh=localhost:22 --forward web=192.168.1.10:80 --db reg.db < nas.pub
  mas4h device add pi-lyon-1 --key pi.pub --label site=lyon --label role=router`,
		Args: exactArgs(1, "one device NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := registry.ValidateDeviceName(name); err != nil {
				return usageError{err}
			}
			if keyFile == "" {
				return usagef("--key is required: the device's public key file (e.g. id_ed25519.pub), or - for stdin")
			}
			pr, err := registry.ParsePortRange(portRange)
			if err != nil {
				return usageError{err}
			}
			remote, err := o.remote()
			if err != nil {
				return err
			}
			if remote && cmd.Flags().Changed("port-range") {
				return usagef("--port-range applies to --db only; a master leases from its own --port-range")
			}
			if !remote {
				warnEphemeralOverlap(g.stderr, pr)
			}
			specs := make([]registry.ForwardSpec, 0, len(forwards))
			for _, f := range forwards {
				spec, err := registry.ParseForwardSpec(f)
				if err != nil {
					return usageError{err}
				}
				specs = append(specs, spec)
			}
			set, err := parseLabelArgs(labels)
			if err != nil {
				return err
			}
			data, err := readKeyInput(keyFile, cmd.InOrStdin())
			if err != nil {
				return err
			}
			key, err := registry.ParsePublicKey(data)
			if err != nil {
				return fmt.Errorf("key %s: %w", keyFile, err)
			}
			return o.withBackend(cmd.Context(), true, func(b deviceBackend, f outputFormat) error {
				dev, err := b.add(cmd.Context(), name, key, specs, set, pr)
				if err != nil {
					return err
				}
				return printDevice(g.stdout, dev, f)
			})
		},
	}
	cmd.Flags().StringVar(&keyFile, "key", "", "the device's public key file, or - to read it from stdin")
	cmd.Flags().StringArrayVar(&forwards, "forward", nil, "a forward NAME=HOST:PORT[,probe=SPEC] (repeatable; default ssh=localhost:22)")
	cmd.Flags().StringVar(&portRange, "port-range", registry.DefaultPortRange.String(), "range remote ports are leased from (--db only)")
	cmd.Flags().StringArrayVar(&labels, "label", nil, "a label K=V, e.g. site=lyon (repeatable)")
	return cmd
}

// parseLabelArgs reads --label K=V flags, refusing a key given twice.
func parseLabelArgs(args []string) (map[string]string, error) {
	if len(args) == 0 {
		return nil, nil
	}
	set := map[string]string{}
	for _, a := range args {
		k, v, err := registry.ParseLabel(a)
		if err != nil {
			return nil, usageError{err}
		}
		if _, dup := set[k]; dup {
			return nil, usagef("label %s given twice", k)
		}
		set[k] = v
	}
	return set, nil
}

func newDeviceLabelCmd(g *globals, o *deviceOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "label NAME K=V|K-...",
		Short: "Set (K=V) or remove (K-) labels of a device",
		Long: `Set or remove labels of a device, all in one change: K=V sets (or replaces)
label K, K- removes it. Operators whose allow list reached the device by a
label it loses have their live sessions ended; their next login opens what
they may still reach.`,
		Example: `  mas4h device label pi-kitchen site=lyon role=router
  mas4h device label pi-kitchen site-`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return usagef("give a device NAME and at least one K=V or K-")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := registry.ValidateDeviceName(name); err != nil {
				return usageError{err}
			}
			var sets, remove []string
			for _, a := range args[1:] {
				if k, ok := strings.CutSuffix(a, "-"); ok && !strings.Contains(a, "=") {
					if err := registry.ValidateLabel(k, ""); err != nil {
						return usageError{err}
					}
					remove = append(remove, k)
					continue
				}
				sets = append(sets, a)
			}
			set, err := parseLabelArgs(sets)
			if err != nil {
				return err
			}
			return o.withBackend(cmd.Context(), false, func(b deviceBackend, f outputFormat) error {
				dev, err := b.label(cmd.Context(), name, set, remove)
				if err != nil {
					return err
				}
				return printDevice(g.stdout, dev, f)
			})
		},
	}
}

// readKeyInput reads a public key file or stdin, refusing anything too big
// to be one public key.
func readKeyInput(path string, stdin io.Reader) ([]byte, error) {
	const max = 64 << 10
	var r io.Reader
	if path == "-" {
		r = stdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("reading key: %w", err)
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, fmt.Errorf("reading key %s: %w", path, err)
	}
	if len(data) > max {
		return nil, fmt.Errorf("key %s: more than %d KiB; a public key is one short line", path, max>>10)
	}
	return data, nil
}

func newDeviceListCmd(g *globals, o *deviceOpts) *cobra.Command {
	var selectors []string
	cmd := &cobra.Command{
		Use:   "list [--selector SEL]...",
		Short: "List enrolled devices, or those selectors pick",
		Long: `List enrolled devices. With --selector, only those it picks: a device name
glob (pi-*) or a label (site=lyon); several --selector are OR'ed.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			sels, err := registry.ParseSelectors(selectors)
			if err != nil {
				return usageError{err}
			}
			return o.withBackend(cmd.Context(), false, func(b deviceBackend, f outputFormat) error {
				devs, err := b.list(cmd.Context(), sels)
				if err != nil {
					return err
				}
				if f == "json" {
					if devs == nil {
						devs = []wire.Device{}
					}
					return writeJSON(g.stdout, devs)
				}
				rows := [][]string{{"NAME", "STATUS", "FORWARDS", "LABELS", "FINGERPRINT"}}
				for _, d := range devs {
					rows = append(rows, []string{d.Name, d.Status, forwardsSummary(d.Forwards), labelsSummary(d.Labels), d.Fingerprint})
				}
				return writeTable(g.stdout, rows)
			})
		},
	}
	cmd.Flags().StringArrayVar(&selectors, "selector", nil, "only devices this selects: a name glob (pi-*) or a label (site=lyon); repeatable, OR'ed")
	return cmd
}

func labelsSummary(l map[string]string) string {
	if len(l) == 0 {
		return "-"
	}
	return registry.FormatLabels(l)
}

func newDeviceShowCmd(g *globals, o *deviceOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show one device",
		Args:  exactArgs(1, "one device NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.withBackend(cmd.Context(), false, func(b deviceBackend, f outputFormat) error {
				dev, err := b.show(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				return printDevice(g.stdout, dev, f)
			})
		},
	}
}

func newDeviceRevokeCmd(g *globals, o *deviceOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke NAME",
		Short: "Refuse the device's next authentication and end its live sessions",
		Long: `Revoke a device: its key is refused from now on and slaves end its live
sessions (a slave following this registry does so within 2 s; a slave under a
master within one heartbeat). The device and
its port leases stay in the registry; "rm" deletes them.`,
		Args: exactArgs(1, "one device NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.withBackend(cmd.Context(), false, func(b deviceBackend, f outputFormat) error {
				dev, err := b.revoke(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				return printDevice(g.stdout, dev, f)
			})
		},
	}
}

func newDeviceRmCmd(g *globals, o *deviceOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a device and free its ports",
		Args:  exactArgs(1, "one device NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.withBackend(cmd.Context(), false, func(b deviceBackend, f outputFormat) error {
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

func printDevice(w io.Writer, d wire.Device, f outputFormat) error {
	if f == "json" {
		return writeJSON(w, d)
	}
	rows := [][]string{
		{"name:", d.Name},
		{"status:", d.Status},
		{"key:", d.KeyType + " " + d.Fingerprint},
		{"created:", d.CreatedAt.Format("2006-01-02 15:04:05Z07:00")},
	}
	if len(d.Labels) > 0 {
		rows = append(rows, []string{"labels:", registry.FormatLabels(d.Labels)})
	}
	for _, fw := range d.Forwards {
		probe := ""
		if fw.Probe != "" {
			probe = " (probe " + fw.Probe + ")"
		}
		rows = append(rows, []string{"forward:", fmt.Sprintf("%s: slave port %d -> device %s%s", fw.Name, fw.RemotePort, fw.Target, probe)})
	}
	return writeTable(w, rows)
}

func forwardsSummary(fs []wire.Forward) string {
	parts := make([]string, 0, len(fs))
	for _, f := range fs {
		parts = append(parts, f.Name+":"+strconv.Itoa(f.RemotePort))
	}
	return strings.Join(parts, ",")
}

package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/names"
	"github.com/mas4h/mas4h/registry"
)

func newEventsCmd(g *globals) *cobra.Command {
	o := &deviceOpts{g: g}
	var device, operator, slave, since string
	var limit int
	cmd := &cobra.Command{
		Use:   "events [--device NAME] [--operator NAME] [--since T] [-o json]",
		Short: "List events: enrolments, connects, reaps, refusals, operator access",
		Long: `List the event log, oldest first: enrolments and revocations, tunnels up and
down, reaps, refused keys, slaves up and down, and operators' access
(operator-connect and operator-disconnect, with device, slave and duration;
operator-deny for refusals).

Against a master (--master URL or $MAS4H_MASTER, with its admin token file from
--token-file or $MAS4H_TOKEN_FILE), or directly on a local registry file (--db
PATH).`,
		Example: `  mas4h events --operator alice
  mas4h events --device pi-kitchen --since 2025-06-01T00:00:00Z -o json`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if device != "" {
				if err := names.Device(device); err != nil {
					return usageError{err}
				}
			}
			if operator != "" {
				if err := names.Operator(operator); err != nil {
					return usageError{err}
				}
			}
			if slave != "" {
				if err := names.Slave(slave); err != nil {
					return usageError{err}
				}
			}
			var t time.Time
			if since != "" {
				var err error
				if t, err = parseSince(since, time.Now()); err != nil {
					return err
				}
			}
			if limit < 0 || limit > 10000 {
				return usagef("--limit must be 1-10000 (0: the default, 1000)")
			}
			q := client.EventQuery{Device: device, Operator: operator, Slave: slave, Since: t, Limit: limit}
			return o.withBackend(cmd.Context(), false, func(b deviceBackend, f outputFormat) error {
				evs, err := listEvents(cmd.Context(), b, q)
				if err != nil {
					return err
				}
				if f == "json" {
					return writeJSON(g.stdout, evs)
				}
				rows := [][]string{{"AT", "KIND", "DEVICE", "OPERATOR", "SLAVE", "DETAIL"}}
				for _, e := range evs {
					rows = append(rows, []string{e.At.Local().Format("2006-01-02 15:04:05"), e.Kind, dash(e.Device), dash(e.Operator), dash(e.Slave), e.Detail})
				}
				return writeTable(g.stdout, rows)
			})
		},
	}
	cmd.Flags().StringVar(&o.db, "db", "", "local registry file (SQLite), e.g. /var/lib/mas4h/registry.db")
	o.mf.add(cmd.Flags())
	cmd.Flags().StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	cmd.Flags().StringVar(&device, "device", "", "only this device's events")
	cmd.Flags().StringVar(&operator, "operator", "", "only this operator's events")
	cmd.Flags().StringVar(&slave, "slave", "", "only events about this slave")
	cmd.Flags().StringVar(&since, "since", "", "only events at or after T: an RFC 3339 time (2025-06-01T12:00:00Z) or a duration ago (1h, 30m)")
	cmd.Flags().IntVar(&limit, "limit", 0, "at most this many events (default 1000)")
	return cmd
}

// parseSince reads --since: an RFC 3339 time, or a duration before now.
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, usagef("--since must be an RFC 3339 time like 2025-06-01T12:00:00Z or a duration like 1h, got %q", s)
}

func listEvents(ctx context.Context, b deviceBackend, q client.EventQuery) ([]wire.Event, error) {
	switch b := b.(type) {
	case masterBackend:
		return b.c.Events(ctx, q)
	case localBackend:
		evs, err := b.st.Events(ctx, registry.EventFilter{Device: q.Device, Operator: q.Operator, Slave: q.Slave, Since: q.Since, Limit: q.Limit})
		out := make([]wire.Event, len(evs))
		for i, e := range evs {
			out[i] = e.Wire()
		}
		return out, err
	default:
		return nil, fmt.Errorf("no event source for %T", b)
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

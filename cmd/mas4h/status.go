package main

import (
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/master/wire"
)

func newStatusCmd(g *globals) *cobra.Command {
	var mf masterFlags
	var output string
	cmd := &cobra.Command{
		Use:   "status [-o table|json] --master URL --token-file FILE",
		Short: "Show the cluster: slaves, their load, and device counts",
		Long: `Ask the master for the cluster's status: each slave with its address, whether it
is alive (heard from within 3 heartbeat intervals), its tunnels against its
capacity, its load and when it was last heard from; then the device counts.`,
		Example: `  mas4h status --master http://127.0.0.1:8080 --token-file /var/lib/mas4h/admin.token
  MAS4H_MASTER=http://127.0.0.1:8080 MAS4H_TOKEN_FILE=admin.token mas4h status -o json`,
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
			st, err := c.Status(cmd.Context())
			if err != nil {
				return err
			}
			if format == "json" {
				if st.Slaves == nil {
					st.Slaves = []wire.SlaveStatus{}
				}
				return writeJSON(g.stdout, st)
			}
			return printStatus(g, st, time.Now())
		},
	}
	mf.add(cmd.Flags())
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

func printStatus(g *globals, st wire.Status, now time.Time) error {
	rows := [][]string{{"SLAVE", "ADDRESS", "ALIVE", "TUNNELS", "LOAD", "LAST SEEN"}}
	for _, s := range st.Slaves {
		alive := "no"
		if s.Alive {
			alive = "yes"
		}
		rows = append(rows, []string{
			s.Name, net.JoinHostPort(s.Host, strconv.Itoa(s.Port)), alive,
			fmt.Sprintf("%d/%d", s.Tunnels, s.Capacity), fmt.Sprintf("%.1f%%", s.Load*100), ago(now, s.LastSeen),
		})
	}
	if len(st.Slaves) == 0 {
		fmt.Fprintln(g.stdout, "no slave has reported to this master yet")
	} else if err := writeTable(g.stdout, rows); err != nil {
		return err
	}
	d := st.Devices
	_, err := fmt.Fprintf(g.stdout, "\ndevices: %d total, %d active, %d revoked, %d online\n", d.Total, d.Active, d.Revoked, d.Online)
	return err
}

// ago says how long before now t was, coarsely, as people read it.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd ago", int(d.Hours()/24))
	}
}

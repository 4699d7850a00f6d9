package main

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/sshd/hookserver"
)

func newTunnelsCmd(g *globals) *cobra.Command {
	var mf masterFlags
	var stateDir, output string
	cmd := &cobra.Command{
		Use:   "tunnels [-o table|json] [--state-dir DIR | --master URL --token-file F]",
		Short: "List live tunnels, from the master or from a local slave",
		Long: `List live tunnels: device, forward, slave, port on the slave, the device's
address, since when, and the last probe's result. With --state-dir, ask the
slave daemon running on this host (root); otherwise ask the master.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			format, err := parseOutput(output)
			if err != nil {
				return err
			}
			var tunnels []wire.Tunnel
			if stateDir != "" {
				abs, err := filepath.Abs(stateDir)
				if err != nil {
					return usageError{err}
				}
				r, err := hookserver.LocalTunnels(cmd.Context(), abs)
				if err != nil {
					return err
				}
				tunnels = r.Tunnels
			} else {
				c, err := mf.client(g)
				if err != nil {
					return err
				}
				if tunnels, err = c.Tunnels(cmd.Context()); err != nil {
					return err
				}
			}
			if tunnels == nil {
				tunnels = []wire.Tunnel{}
			}
			if format == "json" {
				return writeJSON(g.stdout, tunnels)
			}
			now := time.Now()
			rows := [][]string{{"DEVICE", "FORWARD", "SLAVE", "PORT", "REMOTE", "UP", "LAST PROBE"}}
			for _, t := range tunnels {
				probe := "-"
				if t.LastProbe != nil {
					probe = "ok " + ago(now, t.LastProbe.At)
					if !t.LastProbe.OK {
						probe = "FAIL " + ago(now, t.LastProbe.At) + ": " + t.LastProbe.Detail
					}
				}
				up := "-"
				if !t.Since.IsZero() {
					up = ago(now, t.Since)
				}
				rows = append(rows, []string{t.Device, t.Forward, t.Slave, fmt.Sprint(t.Port), t.Remote, up, probe})
			}
			return writeTable(g.stdout, rows)
		},
	}
	mf.add(cmd.Flags())
	cmd.Flags().StringVar(&stateDir, "state-dir", "", "a local slave's state dir (ask that slave instead of the master)")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// newManCmd writes man pages for the whole command tree (make man, make deb).
// Hidden: it is a build step, not an operator's command.
func newManCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    "man DIR",
		Short:  "Write man pages (section 1) for every command into DIR",
		Hidden: true,
		Args:   exactArgs(1, "the output directory"),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			root := cmd.Root()
			root.DisableAutoGenTag = true // reproducible pages: no generation date
			hdr := &doc.GenManHeader{Title: "MAS4H", Section: "1", Source: "mas4h " + version, Manual: "mas4h manual"}
			if err := doc.GenManTree(root, hdr, dir); err != nil {
				return fmt.Errorf("writing man pages into %s: %w", dir, err)
			}
			fmt.Fprintf(g.stdout, "man pages written to %s\n", dir)
			return nil
		},
	}
}

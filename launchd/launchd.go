// Package launchd renders launchd property lists, macOS's service
// definitions, for the device agent's daemon under /Library/LaunchDaemons.
// It writes the XML itself (a handful of keys, every string escaped) so
// that the static agent links no plist library.
package launchd

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"strings"
)

// Job is one launchd daemon.
type Job struct {
	Label   string   // reverse-DNS name, the plist's file name without .plist
	Program []string // ProgramArguments: an absolute path, then its arguments
	// LogPath gets both standard output and standard error
	// (StandardOutPath, StandardErrorPath).
	LogPath string
	// ThrottleInterval is the least time in seconds between two starts
	// (launchd's own default is 10).
	ThrottleInterval int
	// ExitTimeOut is how long in seconds launchd waits after SIGTERM before
	// SIGKILL when it stops the job.
	ExitTimeOut int
	Comment     string // a line of XML comment after the DOCTYPE
}

// Plist renders j: started at boot (RunAtLoad) and kept running
// (KeepAlive), with umask 077 for the files it creates.
func Plist(j Job) ([]byte, error) {
	switch {
	case j.Label == "" || strings.ContainsAny(j.Label, "/ \t\n"):
		return nil, fmt.Errorf("launchd label %q is not a reverse-DNS name", j.Label)
	case len(j.Program) == 0 || !strings.HasPrefix(j.Program[0], "/"):
		return nil, errors.New("launchd job: the program must be an absolute path")
	case j.LogPath == "" || !strings.HasPrefix(j.LogPath, "/"):
		return nil, errors.New("launchd job: the log path must be absolute")
	case strings.Contains(j.Comment, "--"):
		return nil, errors.New("launchd job: an XML comment cannot hold --")
	}
	var b bytes.Buffer
	b.WriteString(xml.Header)
	b.WriteString(`<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">` + "\n")
	if j.Comment != "" {
		b.WriteString("<!-- " + j.Comment + " -->\n")
	}
	b.WriteString("<plist version=\"1.0\">\n<dict>\n")
	str := func(key, v string) {
		b.WriteString("\t<key>" + key + "</key>\n\t<string>" + esc(v) + "</string>\n")
	}
	boolean := func(key string) { b.WriteString("\t<key>" + key + "</key>\n\t<true/>\n") }
	integer := func(key string, v int) {
		if v > 0 {
			fmt.Fprintf(&b, "\t<key>%s</key>\n\t<integer>%d</integer>\n", key, v)
		}
	}
	str("Label", j.Label)
	b.WriteString("\t<key>ProgramArguments</key>\n\t<array>\n")
	for _, a := range j.Program {
		b.WriteString("\t\t<string>" + esc(a) + "</string>\n")
	}
	b.WriteString("\t</array>\n")
	boolean("RunAtLoad")
	boolean("KeepAlive")
	integer("ThrottleInterval", j.ThrottleInterval)
	integer("ExitTimeOut", j.ExitTimeOut)
	integer("Umask", 0o077)
	str("StandardOutPath", j.LogPath)
	str("StandardErrorPath", j.LogPath)
	b.WriteString("</dict>\n</plist>\n")
	return b.Bytes(), nil
}

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s)) // a strings.Builder does not fail
	return b.String()
}

package main

import (
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/token"
)

// masterFlags are how admin commands find the master and its admin token:
// --master or MAS4H_MASTER (one URL, or several masters of one fleet
// separated by commas: tried in the order given, the next when one does
// not answer), --token-file or MAS4H_TOKEN_FILE.
type masterFlags struct {
	master    string
	tokenFile string
}

func (m *masterFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&m.master, "master", "", "master URL, e.g. http://127.0.0.1:8080, or several masters of one fleet as URL,URL,... (tried in order, the next when one does not answer; --log-level debug says which answered) (default $MAS4H_MASTER)")
	fs.StringVar(&m.tokenFile, "token-file", "", "file holding the master's admin token (default $MAS4H_TOKEN_FILE)")
}

// url is the master's URL from the flag or the environment, "" for none.
func (m *masterFlags) url() string {
	if m.master != "" {
		return m.master
	}
	return os.Getenv("MAS4H_MASTER")
}

// client builds an API client for url() with the admin token; g's logger
// says (at debug) which master answered.
func (m *masterFlags) client(g *globals) (*client.Client, error) {
	u := m.url()
	if u == "" {
		return nil, usagef("no master given: pass --master URL (or set MAS4H_MASTER) and --token-file FILE (or set MAS4H_TOKEN_FILE)")
	}
	tf := m.tokenFile
	if tf == "" {
		tf = os.Getenv("MAS4H_TOKEN_FILE")
	}
	if tf == "" {
		return nil, usagef("no token file given: pass --token-file FILE (or set MAS4H_TOKEN_FILE), the master's admin token file (admin.token next to its registry)")
	}
	tok, err := token.Load(tf)
	if err != nil {
		return nil, err
	}
	c, err := client.New(u, tok, client.WithLogger(g.logger()))
	if err != nil {
		return nil, usageError{err}
	}
	for _, cu := range c.Cleartext() {
		fmt.Fprintf(g.stderr, "warning: %s is plain http: the admin token and every answer cross the network unprotected; serve the master over https (--tls-cert, --tls-key)\n", cu)
	}
	return c, nil
}

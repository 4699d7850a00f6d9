package install

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/mas4h/mas4h/sshd/statedir"
)

// The config skeletons are the EnvironmentFiles of the units. Each holds one
// variable with the daemon's flags; systemd splits it at spaces.

func masterConf(args string) []byte {
	if args == "" {
		args = "--listen 127.0.0.1:8080"
	}
	return fmt.Appendf(nil, `# mas4h master: flags for mas4h-master.service (a systemd EnvironmentFile;
# no shell syntax). The unit passes --db %[1]s/registry.db; the
# admin token is created next to it on first start:
#   %[1]s/admin.token  for mas4h device/slave/status (--token-file)
# Each slave gets its own credential: mas4h slave add NAME --token-file-out F.
# An older install's shared slave.token is accepted only with
# --allow-shared-slave-token, while its slaves move over (see the README).
# See mas4h master --help (man mas4h-master).
MAS4H_MASTER_ARGS="%[2]s"
`, MasterStateDir, args)
}

func slaveConf(name, args string) []byte {
	if args == "" {
		args = "--master http://127.0.0.1:8080 --token-file " + SlaveCredentialPath(name) + " --ssh-listen 0.0.0.0:2222"
	}
	return fmt.Appendf(nil, `# mas4h slave %[1]s: flags for mas4h-slave@%[1]s.service (a systemd
# EnvironmentFile; no shell syntax). The unit passes --name %[1]s.
# Under a master:  --master URL --token-file %[5]s (this
#                  slave's own credential, mode 0600: on the master,
#                  mas4h slave add %[1]s --token-file-out FILE, then copy it
#                  here, or pass it to mas4h install slave --credential FILE)
#                  [--public-host HOST]
# Standalone:      --db %[2]s/registry.db
# The state dir defaults to %[3]s; see mas4h slave --help.
MAS4H_SLAVE_ARGS="%[4]s"
`, name, StateRoot, statedir.Default(name), args, SlaveCredentialPath(name))
}

// SlaveCredentialPath is where a slave's own credential lives by default.
func SlaveCredentialPath(name string) string {
	return filepath.Join(ConfDir, "slave-"+name+".token")
}

func agentConf(args string) []byte {
	if args == "" {
		args = "--master https://master.example.net:8080"
	}
	return fmt.Appendf(nil, `# mas4h agent: flags for mas4h-agent.service (a systemd EnvironmentFile; no
# shell syntax). The unit passes --key %[1]s/agent.key (the device's
# private key, mode 0600, enrolled on the master with 'mas4h device add NAME
# --key agent.key.pub') and --state-dir %[2]s. See mas4h agent --help.
MAS4H_AGENT_ARGS="%[3]s"
`, ConfDir, AgentStateDir, args)
}

// ConfKey is the variable of a role's config file.
func ConfKey(role string) string {
	return "MAS4H_" + strings.ToUpper(role) + "_ARGS"
}

// ConfArgs reads the flag line of a role's config file below root, split
// at spaces as systemd splits $VAR; a missing file gives no flags.
func ConfArgs(root, role, name string) ([]string, error) {
	path := filepath.Join(root, ConfPath(role, name))
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	key := ConfKey(role) + "="
	var args []string
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, key) {
			continue
		}
		v := strings.TrimPrefix(line, key)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		args = strings.Fields(v)
	}
	return args, nil
}

// FlagValue finds --flag VALUE or --flag=VALUE in args.
func FlagValue(args []string, flag string) (string, bool) {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1], true
		}
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v, true
		}
	}
	return "", false
}

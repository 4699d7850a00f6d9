package install

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mas4h/mas4h/systemd"
)

// A slave's own credential is installed root's and 0600, replaced when a
// new one is given, and removed by uninstall.
func TestInstallSlaveCredential(t *testing.T) {
	root, run := fakeRoot(t)
	ctx := context.Background()
	cfg := Config{Role: RoleSlave, Name: "s1", Root: root, Units: systemd.Units, Runner: run,
		Credential: []byte("s1." + strings.Repeat("a", 64) + "\n"), CredentialFile: SlaveCredentialPath("s1"),
		Args: "--master https://m:8080 --token-file " + SlaveCredentialPath("s1")}
	var out bytes.Buffer
	cfg.Out = &out
	if _, err := Install(ctx, cfg); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	full := filepath.Join(root, "etc/mas4h/slave-s1.token")
	check := func(want []byte) {
		t.Helper()
		fi, err := os.Stat(full)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("credential file: %v, %v", fi, err)
		}
		if got, _ := os.ReadFile(full); !bytes.Equal(got, want) {
			t.Fatalf("credential file holds %q", got)
		}
	}
	check(cfg.Credential)

	// Installed again with a new credential (the slave was added again on the master).
	cfg.Credential = []byte("s1." + strings.Repeat("b", 64) + "\n")
	out.Reset()
	if _, err := Install(ctx, cfg); err != nil || !strings.Contains(out.String(), "wrote /etc/mas4h/slave-s1.token") {
		t.Fatalf("%v\n%s", err, out.String())
	}
	check(cfg.Credential)

	if err := Uninstall(ctx, Config{Role: RoleSlave, Name: "s1", Root: root, Runner: run, Out: &out}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(full); !os.IsNotExist(err) {
		t.Errorf("credential left behind by uninstall: %v\n%s", err, out.String())
	}

	bad := cfg
	bad.Role, bad.Name = RoleMaster, ""
	if err := bad.Check(); err == nil {
		t.Error("a credential for the master accepted")
	}
}

package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/mas4h/mas4h/atomicfile"
	"github.com/mas4h/mas4h/master/wire"
)

// State dir layout (mode 0700):
//
//	slot.json            the last slot the master gave, for when it is down
//	known_hosts          OpenSSH's pinned host keys
//	home/.ssh/known_hosts dbclient's (it reads $HOME/.ssh/known_hosts)
//	key.openssh, key.dropbear  the device key converted for a client that
//	                     cannot read --key's format (mode 0600)
const (
	slotFile = "slot.json"
)

func (a *Agent) files() Files {
	f := Files{
		KnownHosts: filepath.Join(a.cfg.StateDir, "known_hosts"),
		Home:       filepath.Join(a.cfg.StateDir, "home"),
	}
	return f
}

// loadSlot reads the last slot; ok is false when there is none or it is
// unusable.
func (a *Agent) loadSlot() (wire.Slot, bool) {
	b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, slotFile))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			a.log.Warn("cannot read the last slot", "err", err)
		}
		return wire.Slot{}, false
	}
	var s wire.Slot
	if err := json.Unmarshal(b, &s); err != nil || validSlot(s) != nil {
		a.log.Warn("ignoring an unusable last slot", "file", filepath.Join(a.cfg.StateDir, slotFile))
		return wire.Slot{}, false
	}
	return s, true
}

func (a *Agent) saveSlot(s wire.Slot) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	_, err = atomicfile.WriteIfChanged(filepath.Join(a.cfg.StateDir, slotFile), append(b, '\n'), 0o600)
	return err
}

// ensureStateDir creates the state dir (0700) and dbclient's HOME.
func ensureStateDir(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "home", ".ssh"), 0o700); err != nil {
		return fmt.Errorf("creating state dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	return nil
}

// Package keysfile keeps sshd's fast path: a file of authorized_keys lines
// that sshd reads (AuthorizedKeysFile) before it runs AuthorizedKeysCommand
// (OpenSSH 8.9 and later), so a device listed there logs in without the two
// hook processes an authentication otherwise costs. The daemon lists every
// active device with no live session (none of its leased ports held, no
// connection authenticated with its key), with the very line the
// hook would print. Everything else goes through the hook: unknown keys
// (validated on a miss, under a master), revoked or expired entries, and
// devices whose port is still held — whose reconnect is exactly when
// newest-wins must judge the older session before sshd answers.
package keysfile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mas4h/mas4h/atomicfile"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authkeys"
)

const (
	lookEvery = time.Second      // how often held ports are read and the file rewritten, at most
	lookQuiet = 10 * time.Second // how often they are read while sshd's log says nothing happened
	tick      = 250 * time.Millisecond
	goneFor   = time.Minute // a revoked name stays out this long, whatever the cache says meanwhile
)

// Cache is the slave's cache as the keys file needs it.
type Cache interface {
	Snapshot(ctx context.Context) ([]authkeys.CachedDevice, uint64, error)
	Generation() uint64
}

// Config says where the file goes and what it is read against.
type Config struct {
	Slave   string // the slave's name, for the file's header
	Path    string // the file (statedir.Dir.KeysFile)
	GID     int    // the tunnel user's group: the file is root:GID 0640
	LogPath string // sshd's log, whose growth says sessions came or went
}

// Deps is what the keys file works with.
type Deps struct {
	Cache Cache
	// Held lists the ports something listens on.
	Held func() (map[int]bool, error)
	// Busy counts the live connections of each key (authlog.Index
	// Fingerprints); nil: none known. A device with one goes through the
	// hook, where newest-wins and the session cap apply.
	Busy func() map[string]int
	Now  func() time.Time
	Log  *slog.Logger
}

// File keeps the file in step with the cache and the held ports.
type File struct {
	cfg Config
	d   Deps
	log *slog.Logger

	mu       sync.Mutex
	all      []authkeys.CachedDevice // the cache's snapshot as of allGen (shared: never modified)
	allGen   uint64
	held     map[int]bool         // listening ports at the last look
	busy     map[string]int       // live connections by key at the last look
	gone     map[string]time.Time // revoked or removed, with when
	lines    map[string]string    // rendered lines by device name + key + ports
	wrote    bool
	expires  time.Time // earliest expiry among the written entries (master mode); zero: none
	sum      [32]byte
	entries  int
	lastLook time.Time
	logMark  logMark // sshd's log as of the last look
	poked    bool    // the daemon ended a session since the last look
}

// New makes the keys file; Write puts it in place.
func New(cfg Config, d Deps) *File {
	if d.Now == nil {
		d.Now = time.Now
	}
	return &File{cfg: cfg, d: d, log: d.Log.With("component", "keys-file"), held: map[int]bool{},
		gone: map[string]time.Time{}, lines: map[string]string{}}
}

// logMark is what stat says of sshd's log: sshd writes a line for every
// connection, authentication and disconnect (LogLevel VERBOSE), so an
// unchanged log means no session came or went on its own.
type logMark struct {
	size  int64
	mtime time.Time
}

func markOf(path string) logMark {
	fi, err := os.Lstat(path) // a link where the log should be is not looked through
	if err != nil {
		return logMark{size: -1}
	}
	return logMark{fi.Size(), fi.ModTime()}
}

// Poke asks for a look at the held ports at the next tick: the daemon ended
// a session (sshd logs nothing for a session killed from outside).
func (k *File) Poke() {
	k.mu.Lock()
	k.poked = true
	k.mu.Unlock()
}

// Revoke takes a device out of the file at once, before its sessions are
// ended, and keeps it out for a while: the cache may still list it as active
// until the source has caught up.
func (k *File) Revoke(ctx context.Context, name string) {
	k.mu.Lock()
	k.gone[name] = k.d.Now()
	k.mu.Unlock()
	if err := k.Write(ctx, false); err != nil {
		k.log.Error("keys file: could not take a revoked device out; sshd may still accept it from the file", "device", name, "err", err)
	}
}

// Run keeps the file up to date until ctx ends. It rereads the held ports
// at most every lookEvery: when sshd's log changed (a login or a
// disconnect), when the daemon ended a session, or every lookQuiet
// anyway (a session killed from outside logs nothing). It rewrites the file
// when anything it was written from changed.
func (k *File) Run(ctx context.Context) {
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			mark := markOf(k.cfg.LogPath)
			k.mu.Lock()
			since := now.Sub(k.lastLook)
			look := since >= lookEvery && (k.poked || mark != k.logMark || since >= lookQuiet)
			due := !k.wrote || k.allGen != k.d.Cache.Generation() || (!k.expires.IsZero() && !now.Before(k.expires))
			k.mu.Unlock()
			if !look && !due {
				continue
			}
			if err := k.Write(ctx, look); err != nil && ctx.Err() == nil {
				k.log.Error("keys file: rewrite failed; sshd keeps the previous one", "err", err)
			}
		}
	}
}

// Write renders the file from the cache and the held ports (reread when
// look is set) and replaces it when its content changed.
func (k *File) Write(ctx context.Context, look bool) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.d.Now()
	all, gen, err := k.d.Cache.Snapshot(ctx)
	if err != nil {
		return err
	}
	k.all, k.allGen = all, gen
	if look {
		mark := markOf(k.cfg.LogPath) // before the read: a change during it makes the next tick look again
		held, err := k.d.Held()
		if err != nil {
			return err
		}
		k.held, k.lastLook, k.poked, k.logMark = held, now, false, mark
		if k.d.Busy != nil {
			k.busy = k.d.Busy()
		}
	}
	for name, at := range k.gone {
		if now.Sub(at) > goneFor {
			delete(k.gone, name)
		}
	}
	data, entries, expires := render(k.cfg.Slave, k.all, k.held, k.busy, k.gone, now, k.line)
	sum := sha256.Sum256(data)
	if !k.wrote || sum != k.sum {
		if err := atomicfile.Write(k.cfg.Path, data, 0o640, atomicfile.Owner(0, k.cfg.GID)); err != nil {
			return err
		}
		if !k.wrote {
			k.log.Info("keys file in place: sshd reads known, disconnected devices from it before running the hook", "path", k.cfg.Path, "entries", entries)
		} else {
			k.log.Debug("keys file rewritten", "entries", entries, "was", k.entries)
		}
	}
	k.wrote, k.expires, k.sum, k.entries = true, expires, sum, entries
	return nil
}

// line renders a device's line once per key and ports (a text/template run
// costs more than everything else the file needs).
func (k *File) line(d registry.Device) (string, error) {
	ports := make([]string, 0, len(d.Forwards))
	for _, f := range d.Forwards {
		ports = append(ports, strconv.Itoa(f.RemotePort))
	}
	id := d.Name + "\x00" + d.PublicKey + "\x00" + strings.Join(ports, ",")
	if l, ok := k.lines[id]; ok {
		return l, nil
	}
	l, err := authkeys.AuthorizedLine(d)
	if err != nil {
		k.log.Warn("keys file: device left to the hook", "device", d.Name, "err", err)
		return "", err
	}
	if len(k.lines) > 4*len(k.all)+1024 { // keys or ports changed many times: start over
		clear(k.lines)
	}
	k.lines[id] = l
	return l, nil
}

// Count is the number of devices in the file as last written.
func (k *File) Count() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.entries
}

// render is the file's content: one authorized_keys line per active
// device that is not gone, holds none of its leased ports, and whose cache
// entry has not expired, in name order; and the earliest expiry among them.
// A device whose line cannot be rendered is left out (to the hook).
func render(slave string, all []authkeys.CachedDevice, held map[int]bool, busy map[string]int, gone map[string]time.Time,
	now time.Time, line func(registry.Device) (string, error)) ([]byte, int, time.Time) {
	sorted := make([]authkeys.CachedDevice, len(all))
	copy(sorted, all)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Device.Name < sorted[j].Device.Name })
	var b bytes.Buffer
	fmt.Fprintf(&b, "# managed by mas4h slave %s: active devices with no live session. Rewritten by the daemon; do not edit.\n", slave)
	n := 0
	var expires time.Time
next:
	for _, cd := range sorted {
		d := cd.Device
		if d.Status != registry.StatusActive {
			continue
		}
		if _, ok := gone[d.Name]; ok {
			continue
		}
		if busy[d.Fingerprint] > 0 {
			continue // a connection has its key: the hook decides (newest wins, the session cap)
		}
		for _, f := range d.Forwards {
			if held[f.RemotePort] {
				continue next // a session (maybe a stale one) holds it: the hook decides
			}
		}
		if !cd.Expires.IsZero() {
			if !now.Before(cd.Expires) {
				continue // the hook asks the master again
			}
			if expires.IsZero() || cd.Expires.Before(expires) {
				expires = cd.Expires
			}
		}
		l, err := line(d)
		if err != nil {
			continue
		}
		b.WriteString(l)
		b.WriteByte('\n')
		n++
	}
	return b.Bytes(), n, expires
}

// Remove drops a keys file left by an earlier run with the file on.
func Remove(path string) error {
	err := os.Remove(path)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("removing the old keys file: %w", err)
	}
	return nil
}

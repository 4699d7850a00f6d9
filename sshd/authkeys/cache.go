package authkeys

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	_ "github.com/mattn/go-sqlite3" // registers the "sqlite3" driver

	"github.com/mas4h/mas4h/registry"
)

// Cache is the slave's own copy of what the hook needs, in the state dir. The
// daemon writes it; the hook reads it, read-only, when the daemon is down.
// It uses a rollback journal, not WAL: WAL readers need write access to the
// -shm file, and the hook runs as the unprivileged tunnel user.
type Cache struct {
	db  *sql.DB
	gen atomic.Uint64 // bumped by every write of a device entry

	snapMu  sync.Mutex
	snap    []CachedDevice // All as of snapGen
	snapGen uint64
	snapOK  bool
}

// Generation changes whenever this process changes a device entry, so that
// what is derived from the cache (the daemon's keys file) knows when to be
// rebuilt without rereading it.
func (c *Cache) Generation() uint64 { return c.gen.Load() }

const cacheSchema = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
	fingerprint TEXT PRIMARY KEY,
	name        TEXT NOT NULL,
	device      TEXT NOT NULL,      -- registry.Device as JSON
	expires_at  INTEGER NOT NULL,   -- unix seconds; 0 = never (standalone mode)
	updated_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS devices_name ON devices(name);
`

// OpenCache opens (creating) the cache for the daemon.
func OpenCache(path string) (*Cache, error) {
	q := url.Values{"_journal_mode": {"DELETE"}, "_busy_timeout": {"5000"}, "_txlock": {"immediate"}}
	db, err := sql.Open("sqlite3", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("opening cache %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(cacheSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("opening cache %s: %w", path, err)
	}
	return &Cache{db: db}, nil
}

// OpenCacheReadOnly opens the cache for the hook. A short busy timeout (at
// most 500 ms) keeps the hook inside its 2 s budget while the daemon rewrites
// the cache: SQLite's busy wait does not see a context's deadline.
func OpenCacheReadOnly(path string, busy time.Duration) (*Cache, error) {
	ms := max(min(busy.Milliseconds(), 500), 1)
	q := url.Values{"mode": {"ro"}, "_busy_timeout": {strconv.FormatInt(ms, 10)}}
	db, err := sql.Open("sqlite3", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("opening cache %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	return &Cache{db: db}, nil
}

// Close closes the cache.
func (c *Cache) Close() error { return c.db.Close() }

// SetTunnelUser records the user the hook must insist on.
func (c *Cache) SetTunnelUser(ctx context.Context, user string) error {
	return c.SetMeta(ctx, "tunnel_user", user)
}

// TunnelUser returns the recorded tunnel user.
func (c *Cache) TunnelUser(ctx context.Context) (string, error) {
	u, err := c.Meta(ctx, "tunnel_user")
	if err == nil && u == "" {
		err = errors.New("cache has no tunnel user yet")
	}
	return u, err
}

// ReplaceAll makes the cache hold exactly devs, in one transaction.
func (c *Cache) ReplaceAll(ctx context.Context, devs []registry.Device) error {
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("writing cache: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `DELETE FROM devices`); err != nil {
		return fmt.Errorf("writing cache: %w", err)
	}
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO devices(fingerprint, name, device, expires_at, updated_at) VALUES(?, ?, ?, 0, ?)`)
	if err != nil {
		return fmt.Errorf("writing cache: %w", err)
	}
	defer stmt.Close()
	now := time.Now().Unix()
	for _, d := range devs {
		js, err := json.Marshal(d)
		if err != nil {
			return fmt.Errorf("writing cache: %w", err)
		}
		if _, err := stmt.ExecContext(ctx, d.Fingerprint, d.Name, string(js), now); err != nil {
			return fmt.Errorf("writing cache entry for %s: %w", d.Name, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("writing cache: %w", err)
	}
	c.gen.Add(1)
	return nil
}

// Get finds a device by key fingerprint. The entry is returned even when it
// has expired (expires is then in the past): expiry means "ask the master
// again", and while the master is unreachable a cached device keeps
// connecting. A zero expires never expires (standalone mode).
func (c *Cache) Get(ctx context.Context, fingerprint string) (dev registry.Device, expires time.Time, found bool, err error) {
	var js string
	var exp int64
	err = c.db.QueryRowContext(ctx, `SELECT device, expires_at FROM devices WHERE fingerprint = ?`, fingerprint).Scan(&js, &exp)
	dev, found, err = decodeCached(js, err)
	if exp != 0 {
		expires = time.Unix(exp, 0)
	}
	return dev, expires, found, err
}

// ByName finds a device by name: the daemon uses it to know which ports a
// device held before it was revoked or removed.
func (c *Cache) ByName(ctx context.Context, name string) (registry.Device, bool, error) {
	var js string
	err := c.db.QueryRowContext(ctx, `SELECT device FROM devices WHERE name = ?`, name).Scan(&js)
	return decodeCached(js, err)
}

// Put stores or refreshes one device, valid until expires.
func (c *Cache) Put(ctx context.Context, d registry.Device, expires time.Time) error {
	js, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("writing cache: %w", err)
	}
	_, err = c.db.ExecContext(ctx, `INSERT INTO devices(fingerprint, name, device, expires_at, updated_at) VALUES(?, ?, ?, ?, ?)
		ON CONFLICT(fingerprint) DO UPDATE SET name = excluded.name, device = excluded.device,
		expires_at = excluded.expires_at, updated_at = excluded.updated_at`,
		d.Fingerprint, d.Name, string(js), expires.Unix(), time.Now().Unix())
	if err != nil {
		return fmt.Errorf("writing cache entry for %s: %w", d.Name, err)
	}
	c.gen.Add(1)
	return nil
}

// Delete drops a device by fingerprint or by name (either may be empty).
func (c *Cache) Delete(ctx context.Context, fingerprint, name string) error {
	_, err := c.db.ExecContext(ctx, `DELETE FROM devices WHERE fingerprint = ? OR name = ?`, fingerprint, name)
	if err != nil {
		return fmt.Errorf("writing cache: %w", err)
	}
	c.gen.Add(1)
	return nil
}

// All returns every cached device with its expiry.
func (c *Cache) All(ctx context.Context) ([]CachedDevice, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT device, expires_at FROM devices ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("reading cache: %w", err)
	}
	defer rows.Close()
	var out []CachedDevice
	for rows.Next() {
		var js string
		var exp int64
		if err := rows.Scan(&js, &exp); err != nil {
			return nil, fmt.Errorf("reading cache: %w", err)
		}
		d, _, err := decodeCached(js, nil)
		if err != nil {
			return nil, err
		}
		cd := CachedDevice{Device: d}
		if exp != 0 {
			cd.Expires = time.Unix(exp, 0)
		}
		out = append(out, cd)
	}
	return out, rows.Err()
}

// Snapshot is All as of the cache's current generation, with that
// generation. It is decoded once per generation and shared by every caller
// (the daemon's monitor, keys file and master refresh all walk it), so
// callers must not modify it.
func (c *Cache) Snapshot(ctx context.Context) ([]CachedDevice, uint64, error) {
	c.snapMu.Lock()
	defer c.snapMu.Unlock()
	gen := c.gen.Load() // before reading: a write in between makes the next call reread
	if c.snapOK && gen == c.snapGen {
		return c.snap, gen, nil
	}
	all, err := c.All(ctx)
	if err != nil {
		return nil, 0, err
	}
	c.snap, c.snapGen, c.snapOK = all, gen, true
	return all, gen, nil
}

// CachedDevice is a cache entry.
type CachedDevice struct {
	Device  registry.Device
	Expires time.Time // zero: never
}

// SetMeta and Meta keep small daemon state (the master's revocation
// sequence) next to the entries it refers to.
func (c *Cache) SetMeta(ctx context.Context, key, value string) error {
	_, err := c.db.ExecContext(ctx, `INSERT INTO meta(key, value) VALUES(?, ?)
		ON CONFLICT(key) DO UPDATE SET value = excluded.value`, key, value)
	if err != nil {
		return fmt.Errorf("writing cache: %w", err)
	}
	return nil
}

// Meta reads a value written by SetMeta ("" when absent).
func (c *Cache) Meta(ctx context.Context, key string) (string, error) {
	var v string
	err := c.db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading cache: %w", err)
	}
	return v, nil
}

func decodeCached(js string, err error) (registry.Device, bool, error) {
	if errors.Is(err, sql.ErrNoRows) {
		return registry.Device{}, false, nil
	}
	if err != nil {
		return registry.Device{}, false, fmt.Errorf("reading cache: %w", err)
	}
	var d registry.Device
	if err := json.Unmarshal([]byte(js), &d); err != nil {
		return registry.Device{}, false, fmt.Errorf("reading cache: corrupt entry: %w", err)
	}
	return d, true, nil
}

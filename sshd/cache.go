package sshd

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"time"

	_ "github.com/mattn/go-sqlite3" // registers the "sqlite3" driver

	"github.com/mas4h/mas4h/registry"
)

// Cache is the slave's own copy of what the hook needs, in the state dir. The
// daemon writes it; the hook reads it, read-only, when the daemon is down.
// It uses a rollback journal, not WAL: WAL readers need write access to the
// -shm file, and the hook runs as the unprivileged tunnel user.
type Cache struct {
	db *sql.DB
}

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

// OpenCacheReadOnly opens the cache for the hook. A short busy timeout keeps
// the hook inside its 2 s budget while the daemon rewrites the cache.
func OpenCacheReadOnly(path string) (*Cache, error) {
	q := url.Values{"mode": {"ro"}, "_busy_timeout": {"500"}}
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
	_, err := c.db.ExecContext(ctx, `INSERT INTO meta(key, value) VALUES('tunnel_user', ?)
		ON CONFLICT(key) DO UPDATE SET value = excluded.value`, user)
	if err != nil {
		return fmt.Errorf("writing cache: %w", err)
	}
	return nil
}

// TunnelUser returns the recorded tunnel user.
func (c *Cache) TunnelUser(ctx context.Context) (string, error) {
	var u string
	err := c.db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'tunnel_user'`).Scan(&u)
	if err != nil {
		return "", fmt.Errorf("reading cache: %w", err)
	}
	return u, nil
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
	return nil
}

// Lookup finds a device by key fingerprint; expired entries are misses.
func (c *Cache) Lookup(ctx context.Context, fingerprint string, now time.Time) (registry.Device, bool, error) {
	var js string
	var expires int64
	err := c.db.QueryRowContext(ctx, `SELECT device, expires_at FROM devices WHERE fingerprint = ?`, fingerprint).Scan(&js, &expires)
	return decodeCached(js, expires, now, err)
}

// ByName finds a device by name, expired or not: the daemon uses it to know
// which ports a device held before it was revoked or removed.
func (c *Cache) ByName(ctx context.Context, name string) (registry.Device, bool, error) {
	var js string
	err := c.db.QueryRowContext(ctx, `SELECT device, 0 FROM devices WHERE name = ?`, name).Scan(&js, new(int64))
	return decodeCached(js, 0, time.Time{}, err)
}

func decodeCached(js string, expires int64, now time.Time, err error) (registry.Device, bool, error) {
	if errors.Is(err, sql.ErrNoRows) {
		return registry.Device{}, false, nil
	}
	if err != nil {
		return registry.Device{}, false, fmt.Errorf("reading cache: %w", err)
	}
	if expires != 0 && now.Unix() >= expires {
		return registry.Device{}, false, nil
	}
	var d registry.Device
	if err := json.Unmarshal([]byte(js), &d); err != nil {
		return registry.Device{}, false, fmt.Errorf("reading cache: corrupt entry: %w", err)
	}
	return d, true, nil
}

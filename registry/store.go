package registry

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "github.com/mattn/go-sqlite3" // registers the "sqlite3" driver
)

// Store is the registry's database: a SQLite file, or a PostgreSQL
// database that several masters share. It is safe for concurrent use, also
// by several processes: writes are serialized (dialect.go) and wait for
// each other.
type Store struct {
	db  *dbx
	now func() time.Time // a seam for tests that need fixed times
	// readOnly says why a SQLite file was opened read-only (its disk
	// full at start; see openReadOnly); "" when writable.
	readOnly string
}

// sqliteMagic starts every SQLite 3 database file.
var sqliteMagic = []byte("SQLite format 3\x00")

// IsPostgres reports whether location names a PostgreSQL database
// (postgres://… or postgresql://…) rather than a SQLite file.
func IsPostgres(location string) bool {
	scheme, _, ok := strings.Cut(location, "://")
	return ok && (strings.EqualFold(scheme, "postgres") || strings.EqualFold(scheme, "postgresql"))
}

// CheckPath refuses a registry location this build cannot open: a URL of
// another scheme (sqlite://, mysql://…) where a SQLite file's path or a
// postgres:// URL belongs. Without it, "mysql://db/fleet" would quietly
// become a file under a new directory named "mysql:".
func CheckPath(path string) error {
	scheme, _, ok := strings.Cut(path, "://")
	if !ok || strings.ContainsAny(scheme, "/.") || IsPostgres(path) {
		return nil
	}
	return fmt.Errorf("registry %q: %s:// is not a registry this build knows; give the path of a SQLite file (e.g. /var/lib/mas4h/registry.db) or a PostgreSQL URL (postgres://USER@HOST/DB)", redactURL(path), scheme)
}

// Open opens the registry at location, a SQLite file's path or a
// postgres:// URL, and brings its schema up to SchemaVersion. A SQLite
// file is created (mode 0600) if absent; its directory must exist.
func Open(ctx context.Context, location string) (*Store, error) {
	if err := CheckPath(location); err != nil {
		return nil, err
	}
	if IsPostgres(location) {
		return openPostgres(ctx, location)
	}
	path := location
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("opening registry %s: %w", path, err)
	}
	if fi, err := os.Stat(filepath.Dir(abs)); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("opening registry %s: directory %s does not exist", path, filepath.Dir(abs))
	}
	existing, err := checkFile(abs)
	if err != nil {
		return nil, fmt.Errorf("opening registry %s: %w", path, err)
	}
	if existing {
		// Check the version on a read-only handle first: the read-write
		// open below switches the file to WAL, which rewrites its header,
		// and a newer binary's file must be left exactly as it was.
		if err := checkVersion(ctx, abs); err != nil {
			if Unwritable(err) {
				return openReadOnly(ctx, abs, err)
			}
			return nil, fmt.Errorf("opening registry %s: %w", path, err)
		}
	} else {
		// sqlite would create the file with the umask's mode; the registry
		// holds the fleet's keys, so create it private ourselves.
		f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("opening registry %s: %w", path, err)
		}
		if f != nil {
			f.Close()
		}
	}

	// synchronous=NORMAL: in WAL mode a process crash (kill -9) loses no
	// committed transaction, only a power loss may lose the last ones; the
	// master writes on every heartbeat and slot grant, and FULL would fsync
	// each of them.
	db, err := sql.Open("sqlite3", dsn(abs, "_journal_mode=WAL&_synchronous=NORMAL&_foreign_keys=on&_busy_timeout=5000&_txlock=immediate"))
	if err != nil {
		return nil, fmt.Errorf("opening registry %s: %w", path, err)
	}
	s := &Store{db: &dbx{DB: db}, now: time.Now}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		if existing && Unwritable(err) {
			return openReadOnly(ctx, abs, err)
		}
		return nil, fmt.Errorf("opening registry %s: %w", path, err)
	}
	return s, nil
}

// openReadOnly opens an existing SQLite file that cannot be opened for
// writing (its filesystem full: WAL mode needs room for its -wal and
// -shm files), read-only and without those files, so that a master
// restarted on a full disk still validates keys, dispatches and answers
// reads, and says why it refuses writes. That is safe only when no
// write-ahead log holds changes the file lacks (a clean shutdown leaves
// none): otherwise the last changes, a revocation among them, would be
// unseen, and it refuses to start.
func openReadOnly(ctx context.Context, abs string, cause error) (*Store, error) {
	if fi, err := os.Stat(abs + "-wal"); err == nil && fi.Size() > 0 {
		return nil, fmt.Errorf("opening registry %s: %w; its write-ahead log %s-wal holds changes not yet in the file, which a read-only start would not see: free space on its filesystem (about 4 MiB beyond the database) and start again", abs, cause, abs)
	}
	db, err := sql.Open("sqlite3", dsn(abs, "mode=ro&immutable=1&_foreign_keys=on"))
	if err != nil {
		return nil, fmt.Errorf("opening registry %s read-only: %w", abs, err)
	}
	v, err := readVersion(ctx, db, false)
	if err == nil && v != SchemaVersion {
		err = fmt.Errorf("schema version %d needs migrating to %d, which needs a writable file", v, SchemaVersion)
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("opening registry %s: %w; read-only: %w", abs, cause, err)
	}
	return &Store{db: &dbx{DB: db}, now: time.Now, readOnly: cause.Error()}, nil
}

// ReadOnly says why the registry was opened read-only ("" when it is
// writable): every write fails, as Unwritable.
func (s *Store) ReadOnly() string { return s.readOnly }

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// DB exposes the handle for packages that add their own tables and for tests.
func (s *Store) DB() *sql.DB { return s.db.DB }

// Postgres reports whether the registry is a PostgreSQL database.
func (s *Store) Postgres() bool { return s.db.pg }

// dsn builds a file: URI so that any character in the path is escaped
// rather than read as the start of the query string.
func dsn(abs, query string) string {
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(abs), RawQuery: query}
	return u.String()
}

// checkFile reports whether path exists with content, and refuses a file
// that is not a SQLite database with a clearer word than sqlite's own
// "file is not a database".
func checkFile(path string) (existing bool, err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	hdr := make([]byte, len(sqliteMagic))
	n, err := io.ReadFull(f, hdr)
	switch {
	case errors.Is(err, io.EOF):
		return false, nil // empty file: sqlite treats it as a new database
	case err != nil && !errors.Is(err, io.ErrUnexpectedEOF):
		return false, err
	}
	if !bytes.Equal(hdr[:n], sqliteMagic) {
		return false, fmt.Errorf("%s is not a SQLite database (wrong file, or corrupted)", path)
	}
	return true, nil
}

// checkVersion refuses a database written by a newer schema without
// writing to it.
func checkVersion(ctx context.Context, abs string) error {
	db, err := sql.Open("sqlite3", dsn(abs, "mode=ro&_busy_timeout=5000"))
	if err != nil {
		return err
	}
	defer db.Close()
	v, err := readVersion(ctx, db, false)
	if err != nil {
		return err
	}
	return tooNew(v)
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// readVersion returns the schema version, 0 for a database mas4h never
// touched.
func readVersion(ctx context.Context, q querier, pg bool) (int, error) {
	var n int
	find := `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'`
	if pg {
		find = `SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'schema_version'`
	}
	err := q.QueryRowContext(ctx, find).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("reading schema version: %w", err)
	}
	if n == 0 {
		return 0, nil
	}
	var v int
	if err := q.QueryRowContext(ctx, `SELECT coalesce(max(version), 0) FROM schema_version`).Scan(&v); err != nil {
		return 0, fmt.Errorf("reading schema version: %w", err)
	}
	return v, nil
}

func tooNew(v int) error {
	if v > SchemaVersion {
		return fmt.Errorf("database schema version %d is newer than this binary's version %d; upgrade mas4h: %w", v, SchemaVersion, ErrSchemaTooNew)
	}
	return nil
}

// migrate applies the missing migrations in one transaction, so a crash
// leaves the database at the old version, never half-way.
func (s *Store) migrate(ctx context.Context) error {
	// The common case, an up-to-date file, needs no write lock: Open runs
	// in every short-lived command, and IMMEDIATE would queue it behind
	// the master's writes.
	v, err := readVersion(ctx, s.db, s.db.pg)
	if err != nil {
		return err
	}
	if err := tooNew(v); err != nil {
		return err
	}
	if v == SchemaVersion {
		return nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrating: %w", err)
	}
	defer tx.Rollback()
	// Read again under the lock: another process may have migrated since.
	v, err = readVersion(ctx, tx, s.db.pg)
	if err != nil {
		return err
	}
	if err := tooNew(v); err != nil {
		return err
	}
	if v == SchemaVersion {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("migrating: %w", err)
	}
	steps := migrations
	if s.db.pg {
		steps = pgMigrations
	}
	if v == 4 && !s.db.pg {
		// Binaries built between the sessions table's migration (5) and
		// the operators' (6) ran all five migrations but wrote version 4
		// (SchemaVersion lagged behind len(migrations)): a version-4 file
		// that has the sessions table is at version 5.
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'sessions'`).Scan(&n); err != nil {
			return fmt.Errorf("migrating: %w", err)
		}
		if n == 1 {
			v = 5
		}
	}
	for i := v; i < len(steps); i++ {
		if _, err := tx.ExecContext(ctx, steps[i]); err != nil {
			return fmt.Errorf("migrating to schema version %d: %w", i+1, err)
		}
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM schema_version`); err != nil {
		return fmt.Errorf("migrating: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES (?)`, SchemaVersion); err != nil {
		return fmt.Errorf("migrating: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrating: %w", err)
	}
	return nil
}

package registry

import (
	"context"
	"database/sql"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// The registry speaks one SQL to two engines. Queries are written with
// SQLite's "?" placeholders and in the subset both engines share (ON
// CONFLICT … DO UPDATE, RETURNING, CASE for the scalar min and max,
// "user" quoted, no LIKE); on PostgreSQL, dbx rewrites the placeholders to
// $1, $2, … . The schema is written once per engine (schema.go,
// schema_postgres.go), version for version.
//
// Writers are serialized on both: SQLite's transactions are IMMEDIATE
// (the file's write lock), and on PostgreSQL every read-write transaction
// first takes one transaction-scoped advisory lock. That keeps every
// read-then-write the store does (the lowest free ports, a name's
// uniqueness, the revocation log's order) as correct with several masters
// as with one, and sequence numbers and event ids commit in order, so
// followers that page "after N" miss nothing. Reads take no lock.

// indexedBy is SQLite's index hint, which PostgreSQL does not take.
var indexedBy = regexp.MustCompile(`\s+INDEXED BY\s+\w+`)

// writeLock is the advisory lock key every PostgreSQL write transaction
// takes ("mas4h" in ASCII).
const writeLock = 0x6d61733468

// dbx is the database handle: *sql.DB with the placeholders rewritten for
// PostgreSQL.
type dbx struct {
	*sql.DB
	pg      bool
	rebinds sync.Map // query → rewritten query
	// writers admits this process's write transactions on PostgreSQL a
	// few at a time: only one holds the write lock at once, and each
	// waiting in the server holds a pooled connection, so that a queue of
	// writers (heartbeats of a busy fleet) starved the reads of slot
	// requests of connections. Nil on SQLite.
	writers chan struct{}
}

// pgWriters is how many write transactions of one master may wait for
// the write lock in the server: one holds it, one is ready next.
const pgWriters = 2

// txx is a transaction on dbx.
type txx struct {
	*sql.Tx
	d    *dbx
	done sync.Once // returns the writers slot, if it holds one
	slot bool
}

// q rewrites query's "?" placeholders to "$N" on PostgreSQL. A "?" inside
// a quoted string or identifier is left alone.
func (d *dbx) q(query string) string {
	if !d.pg {
		return query
	}
	if r, ok := d.rebinds.Load(query); ok {
		return r.(string)
	}
	var b strings.Builder
	b.Grow(len(query) + 16)
	n := 0
	var quote byte
	for i := 0; i < len(query); i++ {
		c := query[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '?':
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(c)
	}
	r := indexedBy.ReplaceAllString(b.String(), "")
	d.rebinds.Store(query, r)
	return r
}

func (d *dbx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return d.DB.ExecContext(ctx, d.q(query), args...)
}

func (d *dbx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return d.DB.QueryContext(ctx, d.q(query), args...)
}

func (d *dbx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return d.DB.QueryRowContext(ctx, d.q(query), args...)
}

func (d *dbx) Exec(query string, args ...any) (sql.Result, error) {
	return d.ExecContext(context.Background(), query, args...)
}

func (d *dbx) Query(query string, args ...any) (*sql.Rows, error) {
	return d.QueryContext(context.Background(), query, args...)
}

func (d *dbx) QueryRow(query string, args ...any) *sql.Row {
	return d.QueryRowContext(context.Background(), query, args...)
}

// BeginTx begins a transaction; on PostgreSQL a read-write one waits for
// the registry's write lock first (see above).
func (d *dbx) BeginTx(ctx context.Context, opts *sql.TxOptions) (*txx, error) {
	write := d.pg && (opts == nil || !opts.ReadOnly)
	if write && d.writers != nil {
		select {
		case d.writers <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	t := &txx{d: d, slot: write && d.writers != nil}
	tx, err := d.DB.BeginTx(ctx, opts)
	if err != nil {
		t.release()
		return nil, err
	}
	t.Tx = tx
	if write {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(writeLock)); err != nil {
			t.Rollback()
			return nil, err
		}
	}
	return t, nil
}

func (t *txx) release() {
	t.done.Do(func() {
		if t.slot {
			<-t.d.writers
		}
	})
}

// Commit commits the transaction and lets the next writer in.
func (t *txx) Commit() error {
	defer t.release()
	return t.Tx.Commit()
}

// Rollback rolls the transaction back (a no-op after Commit) and lets the
// next writer in.
func (t *txx) Rollback() error {
	defer t.release()
	return t.Tx.Rollback()
}

func (t *txx) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	return t.Tx.PrepareContext(ctx, t.d.q(query))
}

func (d *dbx) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	return d.DB.PrepareContext(ctx, d.q(query))
}

func (t *txx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return t.Tx.ExecContext(ctx, t.d.q(query), args...)
}

func (t *txx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return t.Tx.QueryContext(ctx, t.d.q(query), args...)
}

func (t *txx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return t.Tx.QueryRowContext(ctx, t.d.q(query), args...)
}

// boolInt is b as the 0 or 1 an INTEGER flag column holds: PostgreSQL
// takes no Go bool for a BIGINT.
func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

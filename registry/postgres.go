package registry

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
)

// pgMaxConns bounds one master's connections: PostgreSQL's default
// max_connections is 100, and a fleet runs a few masters beside other
// clients of the same server.
const pgMaxConns = 16

// openPostgres opens the PostgreSQL database at location and brings its
// schema up to SchemaVersion (several masters starting at once migrate
// one after the other: the migration takes the write lock).
func openPostgres(ctx context.Context, location string) (*Store, error) {
	shown := redactURL(location)
	cfg, err := pgconn.ParseConfig(location)
	if err != nil {
		return nil, fmt.Errorf("registry %s: not a PostgreSQL URL this build can use (%v); the form is postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=…]: %w",
			shown, redactErr(err, location), ErrInvalid)
	}
	db, err := sql.Open("pgx", location)
	if err != nil {
		return nil, fmt.Errorf("opening registry %s: %v", shown, redactErr(err, location))
	}
	db.SetMaxOpenConns(pgMaxConns)
	db.SetMaxIdleConns(pgMaxConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("opening registry %s: PostgreSQL at %s:%d does not answer (%w): check that it runs, that this host may connect (pg_hba.conf) and the URL's user, password and database",
			shown, cfg.Host, cfg.Port, redacted{err, location})
	}
	s := &Store{db: &dbx{DB: db, pg: true, writers: make(chan struct{}, pgWriters)}, now: time.Now}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("opening registry %s: %w", shown, redacted{err, location})
	}
	return s, nil
}

// redacted is an error whose text hides the URL's password; errors.Is and
// As still see the cause (Unavailable, ErrSchemaTooNew).
type redacted struct {
	err      error
	location string
}

func (r redacted) Error() string { return redactErr(r.err, r.location) }
func (r redacted) Unwrap() error { return r.err }

// PostgresUnverified says why a PostgreSQL URL's connection can be read
// or altered by a man in the middle ("" when it cannot): a server beyond
// the loopback (or a unix socket) reached without TLS, or with TLS whose
// certificate is not checked (sslmode=prefer, libpq's default, and
// require). The registry holds the fleet's keys and leases: a master
// warns at every start.
func PostgresUnverified(location string) string {
	cfg, err := pgconn.ParseConfig(location)
	if err != nil {
		return ""
	}
	hosts := []*pgconn.FallbackConfig{{Host: cfg.Host, TLSConfig: cfg.TLSConfig}}
	hosts = append(hosts, cfg.Fallbacks...)
	for _, h := range hosts {
		if strings.HasPrefix(h.Host, "/") || h.Host == "localhost" {
			continue
		}
		if ip := net.ParseIP(h.Host); ip != nil && ip.IsLoopback() {
			continue
		}
		switch {
		case h.TLSConfig == nil:
			return fmt.Sprintf("the connection to PostgreSQL at %s may go without TLS: use sslmode=verify-full (and sslrootcert)", h.Host)
		case h.TLSConfig.InsecureSkipVerify:
			return fmt.Sprintf("PostgreSQL's certificate at %s is not checked: use sslmode=verify-full (and sslrootcert)", h.Host)
		}
	}
	return ""
}

// Redact is location fit for logs: a URL's password hidden.
func Redact(location string) string { return redactURL(location) }

// PasswordInURL reports whether location is a URL that carries a password.
func PasswordInURL(location string) bool {
	u, err := url.Parse(location)
	if err != nil || u.User == nil {
		return false
	}
	_, ok := u.User.Password()
	return ok
}

// redactURL hides a URL's password, for messages and logs.
func redactURL(location string) string {
	u, err := url.Parse(location)
	if err != nil || u.User == nil {
		return location
	}
	if _, ok := u.User.Password(); !ok {
		return location
	}
	return u.Redacted()
}

// redactErr is err's text with the URL's password (if any) masked: pgx's
// parse errors may quote the URL.
func redactErr(err error, location string) string {
	msg := err.Error()
	u, perr := url.Parse(location)
	if perr != nil || u.User == nil {
		return msg
	}
	if pw, ok := u.User.Password(); ok && pw != "" {
		msg = strings.ReplaceAll(msg, pw, "xxxxx")
		msg = strings.ReplaceAll(msg, url.QueryEscape(pw), "xxxxx")
	}
	return msg
}

// Unavailable reports whether err is the database out of reach rather than
// the request's fault: PostgreSQL down, restarting, refusing connections,
// or a connection lost mid-call. The master answers 503 with a Retry-After
// and database/sql reconnects by itself on the next call.
func Unavailable(err error) bool {
	if err == nil {
		return false
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case len(pe.Code) == 5 && pe.Code[:2] == "08": // connection exception
			return true
		case pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03": // admin/crash shutdown, cannot connect now
			return true
		case pe.Code == "25006": // read-only transaction: a standby, not (yet) the primary
			return true
		case pe.Code == "53300": // too many connections
			return true
		}
		return false
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true
	}
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return true
	}
	return errors.Is(err, sql.ErrConnDone) || errors.Is(err, driver.ErrBadConn)
}

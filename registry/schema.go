package registry

// SchemaVersion is the schema this binary writes: len(migrations).
const SchemaVersion = 8

// migrations[i] brings the schema from version i to i+1. Append only: a
// released step is never edited, since databases in the field already ran it.
var migrations = []string{
	// 1: devices, forwards with their port leases, the event log.
	`
CREATE TABLE devices (
	id          INTEGER PRIMARY KEY,
	name        TEXT    NOT NULL UNIQUE,
	fingerprint TEXT    NOT NULL UNIQUE,
	key_type    TEXT    NOT NULL,
	public_key  TEXT    NOT NULL,
	status      TEXT    NOT NULL CHECK (status IN ('active', 'revoked')),
	created_at  INTEGER NOT NULL, -- unix nanoseconds, UTC
	updated_at  INTEGER NOT NULL
);
CREATE TABLE forwards (
	device_id   INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
	position    INTEGER NOT NULL, -- order given at enrolment
	name        TEXT    NOT NULL,
	target      TEXT    NOT NULL,
	probe       TEXT    NOT NULL DEFAULT '',
	remote_port INTEGER NOT NULL UNIQUE, -- a port is leased to one forward in the whole registry
	PRIMARY KEY (device_id, name)
);
-- AUTOINCREMENT so ids are never reused after pruning: followers page with AfterID.
CREATE TABLE events (
	id     INTEGER PRIMARY KEY AUTOINCREMENT,
	at     INTEGER NOT NULL,
	kind   TEXT    NOT NULL,
	device TEXT    NOT NULL DEFAULT '',
	detail TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX events_device_id ON events (device, id);
CREATE INDEX events_at ON events (at);
`, // 2: the master's view of the cluster: slaves and their load, the live
	// tunnels they report, the slave each device was last sent to, and the
	// revocation log slaves follow by sequence number.
	`
ALTER TABLE devices ADD COLUMN last_slave TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN slave TEXT NOT NULL DEFAULT '';
CREATE TABLE slaves (
	name       TEXT    PRIMARY KEY,
	host       TEXT    NOT NULL DEFAULT '',
	port       INTEGER NOT NULL DEFAULT 0,
	user       TEXT    NOT NULL DEFAULT '',
	host_keys  TEXT    NOT NULL DEFAULT '[]', -- JSON array of "type base64"
	capacity   INTEGER NOT NULL DEFAULT 0,
	cpu        REAL    NOT NULL DEFAULT 0,
	mem        REAL    NOT NULL DEFAULT 0,
	first_seen INTEGER NOT NULL, -- unix nanoseconds, UTC
	last_seen  INTEGER NOT NULL,
	alive      INTEGER NOT NULL DEFAULT 1
);
-- Replaced per slave on each heartbeat.
CREATE TABLE tunnels (
	slave             TEXT    NOT NULL REFERENCES slaves(name) ON DELETE CASCADE,
	device            TEXT    NOT NULL,
	forward           TEXT    NOT NULL DEFAULT '',
	port              INTEGER NOT NULL,
	remote            TEXT    NOT NULL DEFAULT '',
	since             INTEGER NOT NULL DEFAULT 0,
	last_probe_ok     INTEGER, -- NULL: never probed
	last_probe_at     INTEGER,
	last_probe_detail TEXT
);
CREATE INDEX tunnels_slave ON tunnels (slave);
CREATE INDEX tunnels_device ON tunnels (device);
-- Written by Revoke and Remove in their transaction. The ports are kept
-- here because after rm the device's forwards are gone.
CREATE TABLE revocations (
	seq         INTEGER PRIMARY KEY AUTOINCREMENT,
	at          INTEGER NOT NULL,
	device      TEXT    NOT NULL,
	fingerprint TEXT    NOT NULL,
	ports       TEXT    NOT NULL DEFAULT '[]', -- JSON array of ints
	reason      TEXT    NOT NULL CHECK (reason IN ('revoked', 'removed'))
);
-- Sequence numbers start at 2: 1 is the empty log's, which a new slave is
-- told to follow from, and 0 is a slave that knows nothing yet.
INSERT INTO sqlite_sequence (name, seq) VALUES ('revocations', 1);
`,
	// 3: a slave's share of a virtual IP: which VIP and which node number
	// it holds, so the master can tell the other nodes when it is dead.
	`
ALTER TABLE slaves ADD COLUMN vip  TEXT    NOT NULL DEFAULT '';
ALTER TABLE slaves ADD COLUMN node INTEGER NOT NULL DEFAULT 0;
`,
	// 4: each slave's own credential, kept as a SHA-256 of the secret (the
	// secret is shown once, at 'mas4h slave add', and never stored), and the
	// host keys bound to a slave's name: slaves.host_keys no longer follows
	// every heartbeat; a heartbeat presenting others is refused and they wait
	// in pending_host_keys until an admin accepts them.
	`
CREATE TABLE slave_credentials (
	name        TEXT    PRIMARY KEY,
	secret_hash BLOB    NOT NULL,
	created_at  INTEGER NOT NULL, -- unix nanoseconds, UTC
	rebind      INTEGER NOT NULL DEFAULT 1 -- 1: the next heartbeat's host keys become the slave's
);
ALTER TABLE slaves ADD COLUMN pending_host_keys TEXT    NOT NULL DEFAULT '[]'; -- JSON, like host_keys
ALTER TABLE slaves ADD COLUMN pending_since     INTEGER NOT NULL DEFAULT 0;    -- 0: none pending
`,
	// 5 (it follows 4, the slaves' own credentials): the dashboard's sessions,
	// kept here so that logging out ends one, and so that every master on
	// the registry knows it. The cookie holds a random secret; the row its
	// SHA-256, never the secret.
	`
CREATE TABLE sessions (
	id         TEXT    PRIMARY KEY, -- hex SHA-256 of the cookie's secret
	binding    TEXT    NOT NULL,    -- names the admin token it was opened with: a new token ends it
	csrf       TEXT    NOT NULL,    -- what the session's forms carry
	created_at INTEGER NOT NULL,    -- unix nanoseconds, UTC
	expires_at INTEGER NOT NULL
);
CREATE INDEX sessions_expires ON sessions (expires_at);
`,
	// 6: operators (people who reach devices through a slave's sshd), with
	// their allow lists of selectors; device labels, which selectors match;
	// the operator of operator-* events; and revocations of operators
	// (device empty, operator set), with a third reason, "changed": an
	// operator's reach narrowed (a selector denied, a label changed), so
	// slaves forget its cached lines and end its sessions. The revocations
	// table is rebuilt for that CHECK, keeping its sequence.
	`
ALTER TABLE devices ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'; -- JSON object of K=V
CREATE TABLE operators (
	id          INTEGER PRIMARY KEY,
	name        TEXT    NOT NULL UNIQUE,
	fingerprint TEXT    NOT NULL UNIQUE, -- never a device's: checked on both inserts
	key_type    TEXT    NOT NULL,
	public_key  TEXT    NOT NULL,
	status      TEXT    NOT NULL CHECK (status IN ('active', 'revoked')),
	allow       TEXT    NOT NULL DEFAULT '[]', -- JSON array of selectors
	created_at  INTEGER NOT NULL, -- unix nanoseconds, UTC
	updated_at  INTEGER NOT NULL
);
ALTER TABLE events ADD COLUMN operator TEXT NOT NULL DEFAULT '';
CREATE INDEX events_operator_id ON events (operator, id);
CREATE TABLE revocations_new (
	seq         INTEGER PRIMARY KEY AUTOINCREMENT,
	at          INTEGER NOT NULL,
	device      TEXT    NOT NULL,
	operator    TEXT    NOT NULL DEFAULT '',
	fingerprint TEXT    NOT NULL,
	ports       TEXT    NOT NULL DEFAULT '[]',
	reason      TEXT    NOT NULL CHECK (reason IN ('revoked', 'removed', 'changed'))
);
INSERT INTO sqlite_sequence (name, seq) SELECT 'revocations_new', seq FROM sqlite_sequence WHERE name = 'revocations';
INSERT INTO revocations_new (seq, at, device, fingerprint, ports, reason)
	SELECT seq, at, device, fingerprint, ports, reason FROM revocations;
DROP TABLE revocations;
ALTER TABLE revocations_new RENAME TO revocations;
`,
	// 7: history for the dashboard's charts. load_samples holds, per
	// minute, the fleet's online devices (series '') and each slave's
	// tunnels, capacity and liveness (series = the slave's name), as the
	// master samples them: the event log is bounded by rows, so at a large
	// fleet it holds days, not weeks, and a fleet-wide count over a week
	// from raw events would read millions of rows per page. events_kind_at
	// bounds the reads of one kind in a time window (disconnects of the
	// last day, slaves down and up).
	`
CREATE TABLE load_samples (
	series      TEXT    NOT NULL, -- '': the fleet; else a slave's name
	at          INTEGER NOT NULL, -- unix seconds, start of the minute
	min         INTEGER NOT NULL, -- online devices (fleet) or tunnels (slave), least seen in the minute
	max         INTEGER NOT NULL, -- most seen
	capacity    INTEGER NOT NULL DEFAULT 0,
	alive       INTEGER NOT NULL DEFAULT 1, -- 0: the slave was dead at some sample of the minute
	PRIMARY KEY (series, at)
) WITHOUT ROWID;
CREATE INDEX load_samples_at ON load_samples (at);
CREATE INDEX events_kind_at ON events (kind, at);
`,
	// 8: several masters on one database. Each slave's operator user
	// and live operator sessions (JSON), so that any master sends an
	// operator to it; and master_pending, each master's count of slot
	// grants per slave whose tunnels have not shown up yet, shared every
	// second so that dispatch on one master counts the grants of the others.
	`
ALTER TABLE slaves ADD COLUMN operator_user TEXT NOT NULL DEFAULT '';
ALTER TABLE slaves ADD COLUMN operators     TEXT NOT NULL DEFAULT '[]';
CREATE TABLE master_pending (
	master     TEXT    NOT NULL, -- a master process's id, new at each start
	slave      TEXT    NOT NULL,
	forwards   INTEGER NOT NULL,
	updated_at INTEGER NOT NULL, -- unix nanoseconds, UTC
	PRIMARY KEY (master, slave)
);
`,
}

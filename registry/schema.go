package registry

// SchemaVersion is the schema this binary writes: len(migrations).
const SchemaVersion = 1

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
`,
}

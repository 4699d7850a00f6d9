package registry

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

func hostKey(t *testing.T) string { return AuthorizedKey(newEd25519(t)) }

func kindsOf(t *testing.T, s *Store, slave string) []string {
	t.Helper()
	evs, err := s.Events(context.Background(), EventFilter{Slave: slave})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range evs {
		kinds = append(kinds, e.Kind)
	}
	return kinds
}

func count(kinds []string, kind string) int {
	n := 0
	for _, k := range kinds {
		if k == kind {
			n++
		}
	}
	return n
}

func TestSlaveCredentialsIssueReplaceRemove(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	if _, err := s.SlaveCredentialHash(ctx, "s1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("no credential yet: %v", err)
	}
	h1 := CredentialHash("secret-one")
	replaced, err := s.SetSlaveCredential(ctx, "s1", h1)
	if err != nil || replaced {
		t.Fatalf("first add: replaced=%v err=%v", replaced, err)
	}
	if got, err := s.SlaveCredentialHash(ctx, "s1"); err != nil || got != h1 {
		t.Fatalf("hash = %x, %v", got, err)
	}
	h2 := CredentialHash("secret-two")
	if replaced, err := s.SetSlaveCredential(ctx, "s1", h2); err != nil || !replaced {
		t.Fatalf("re-add: replaced=%v err=%v", replaced, err)
	}
	if got, _ := s.SlaveCredentialHash(ctx, "s1"); got != h2 {
		t.Fatalf("re-add kept the old hash")
	}
	// Only the hash is stored, never the secret.
	var n int
	s.db.QueryRow(`SELECT count(*) FROM slave_credentials WHERE CAST(secret_hash AS TEXT) LIKE '%secret%'`).Scan(&n)
	if n != 0 {
		t.Error("the secret is stored in clear")
	}
	es, err := s.SlaveEntries(ctx)
	if err != nil || len(es) != 1 || !es[0].Credential || es[0].Registered || !es[0].Rebind {
		t.Fatalf("entries = %+v, %v", es, err)
	}
	if err := s.RemoveSlave(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SlaveCredentialHash(ctx, "s1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("credential after rm: %v", err)
	}
	if err := s.RemoveSlave(ctx, "s1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second rm: %v", err)
	}
	kinds := kindsOf(t, s, "s1")
	if count(kinds, EventSlaveAdded) != 2 || count(kinds, EventSlaveRemoved) != 1 {
		t.Errorf("events = %v", kinds)
	}
}

func TestHostKeysAreBoundToTheName(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	real, real2, other := hostKey(t), hostKey(t), hostKey(t)
	beat := func(i int, host string, keys ...string) (SlaveChange, error) {
		at := t0.Add(time.Duration(i) * time.Second)
		return s.RecordHeartbeat(ctx, SlaveReport{Name: "s2", Host: host, Port: 2222, User: "u", HostKeys: keys, Capacity: 10, At: at,
			Tunnels: []Tunnel{{Device: "d" + host, Port: 20000}}}, at.Add(-time.Minute))
	}
	if ch, err := beat(0, "real", real, real2); err != nil || ch != SlaveNew {
		t.Fatalf("first heartbeat: %v %v", ch, err)
	}
	// Another host with other keys: refused, nothing of it kept.
	for i := 1; i <= 3; i++ {
		_, err := beat(i, "evil", other)
		var mm *HostKeyMismatchError
		if !errors.As(err, &mm) {
			t.Fatalf("heartbeat with other keys: %v", err)
		}
		if mm.New != (i == 1) || mm.Slave != "s2" || mm.Presented[0] != other || mm.Bound[0] != real {
			t.Errorf("beat %d: mismatch %+v", i, mm)
		}
	}
	sl, _ := s.Slaves(ctx)
	if sl[0].Host != "real" || sl[0].HostKeys[0] != real {
		t.Errorf("slave after refused heartbeats = %+v", sl[0])
	}
	tun, _ := s.LiveTunnels(ctx)
	if len(tun) != 1 || tun[0].Device != "dreal" {
		t.Errorf("tunnels replaced by a refused heartbeat: %+v", tun)
	}
	// The real slave keeps beating; the foreign keys stay pending for the admin to see.
	if _, err := beat(4, "real", real, real2); err != nil {
		t.Fatal(err)
	}
	// The same keys in another order are the same keys; one of them alone is not.
	if _, err := beat(5, "real", real2, real); err != nil {
		t.Fatal(err)
	}
	if _, err := beat(5, "real", real); err == nil {
		t.Fatal("a subset of the bound keys was accepted")
	}
	if _, err := beat(5, "evil", other); err == nil {
		t.Fatal(err)
	}
	es, _ := s.SlaveEntries(ctx)
	if len(es) != 1 || len(es[0].Pending) != 1 || es[0].Pending[0] != other || es[0].Credential {
		t.Fatalf("entries = %+v", es)
	}
	if k := kindsOf(t, s, "s2"); count(k, EventSlaveKeyMismatch) != 3 {
		t.Errorf("one mismatch event per new set of keys (other, real alone, other again), got %v", k)
	}

	// Accepting with the wrong fingerprint changes nothing.
	if _, err := s.AcceptSlaveKeys(ctx, "s2", []string{Fingerprint(newEd25519(t))}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("accept with a wrong fingerprint: %v", err)
	}
	if _, err := beat(6, "real", real, real2); err != nil {
		t.Fatalf("still bound to the old keys: %v", err)
	}
	got, err := s.AcceptSlaveKeys(ctx, "s2", KeyFingerprints([]string{other}))
	if err != nil || len(got) != 1 || got[0] != other {
		t.Fatalf("accept: %v %v", got, err)
	}
	if _, err := beat(7, "new", other); err != nil {
		t.Fatalf("accepted keys refused: %v", err)
	}
	var mm *HostKeyMismatchError
	if _, err := beat(8, "real", real, real2); !errors.As(err, &mm) {
		t.Fatalf("old keys after accept: %v", err)
	}
	if _, err := s.AcceptSlaveKeys(ctx, "nope", nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("accept for an unknown slave: %v", err)
	}
	if _, err := s.AcceptSlaveKeys(ctx, "s2", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AcceptSlaveKeys(ctx, "s2", nil); !errors.Is(err, ErrNoPendingKeys) {
		t.Errorf("accept with nothing pending: %v", err)
	}
	if k := kindsOf(t, s, "s2"); count(k, EventSlaveKeyAccepted) != 2 || count(k, EventSlaveKeyMismatch) != 4 {
		t.Errorf("events: %v", k)
	}
}

func TestNewCredentialRebindsHostKeys(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	k1, k2 := hostKey(t), hostKey(t)
	beat := func(i int, key string) error {
		at := t0.Add(time.Duration(i) * time.Second)
		_, err := s.RecordHeartbeat(ctx, SlaveReport{Name: "s1", Host: "h", Port: 2222, User: "u", HostKeys: []string{key}, Capacity: 1, At: at}, at)
		return err
	}
	if _, err := s.SetSlaveCredential(ctx, "s1", CredentialHash("a")); err != nil {
		t.Fatal(err)
	}
	if err := beat(0, k1); err != nil {
		t.Fatal(err)
	}
	if err := beat(1, k2); err == nil {
		t.Fatal("the first heartbeat bound nothing")
	}
	// Re-adding: the next heartbeat (by the new credential's holder) binds.
	if _, err := s.SetSlaveCredential(ctx, "s1", CredentialHash("b")); err != nil {
		t.Fatal(err)
	}
	if es, _ := s.SlaveEntries(ctx); len(es[0].Pending) != 0 || !es[0].Rebind {
		t.Errorf("after re-add: %+v", es[0])
	}
	if err := beat(2, k2); err != nil {
		t.Fatalf("first heartbeat after re-add: %v", err)
	}
	if err := beat(3, k1); err == nil {
		t.Fatal("rebound only once: k1 must now be refused")
	}
}

func TestMigrationToVersion4BindsExistingSlaves(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "v3.db")
	db, err := sql.Open("sqlite3", dsn(path, "_foreign_keys=on"))
	if err != nil {
		t.Fatal(err)
	}
	k := hostKey(t)
	if _, err := db.Exec(`CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (3);` +
		migrations[0] + migrations[1] + migrations[2]); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO slaves (name, host, port, user, host_keys, capacity, first_seen, last_seen) VALUES ('old', 'h', 2222, 'u', ?, 10, 1, 1)`,
		`["`+k+`"]`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	es, err := s.SlaveEntries(ctx)
	if err != nil || len(es) != 1 || es[0].Credential || !es[0].Registered || es[0].Pending != nil {
		t.Fatalf("entries after migration = %+v, %v", es, err)
	}
	now := time.Now()
	if _, err := s.RecordHeartbeat(ctx, SlaveReport{Name: "old", Host: "h", Port: 2222, User: "u", HostKeys: []string{k}, Capacity: 10, At: now}, now); err != nil {
		t.Fatalf("its own keys: %v", err)
	}
	var mm *HostKeyMismatchError
	if _, err := s.RecordHeartbeat(ctx, SlaveReport{Name: "old", Host: "h", Port: 2222, User: "u", HostKeys: []string{hostKey(t)}, Capacity: 10, At: now}, now); !errors.As(err, &mm) {
		t.Fatalf("a slave from before the migration is bound to its keys: %v", err)
	}
}

func TestRemoveSlaveDropsItsTunnels(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	now := time.Now()
	if _, err := s.RecordHeartbeat(ctx, SlaveReport{Name: "s1", Host: "h", Port: 2222, User: "u", HostKeys: []string{hostKey(t)}, Capacity: 10, At: now,
		Tunnels: []Tunnel{{Device: "d1", Port: 20000}}}, now); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveSlave(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	sl, _ := s.Slaves(ctx)
	tun, _ := s.LiveTunnels(ctx)
	if len(sl) != 0 || len(tun) != 0 || countRows(t, s, "tunnels") != 0 {
		t.Errorf("after rm: slaves %+v, tunnels %+v", sl, tun)
	}
}

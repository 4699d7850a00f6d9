package registry

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

func TestMigrationFromVersion1KeepsDevices(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "v1.db")
	db, err := sql.Open("sqlite3", dsn(path, "_foreign_keys=on"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1);` + migrations[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO devices (name, fingerprint, key_type, public_key, status, created_at, updated_at)
		VALUES ('old', 'SHA256:x', 'ssh-ed25519', 'ssh-ed25519 AAAA', 'active', 1, 1);
		INSERT INTO forwards (device_id, position, name, target, remote_port) VALUES (1, 0, 'ssh', 'localhost:22', 20000);`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d, err := s.Device(ctx, "old")
	if err != nil || d.LastSlave != "" || len(d.Forwards) != 1 {
		t.Fatalf("device after migration = %+v, %v", d, err)
	}
	if err := s.RecordSlots(ctx, []SlotGrant{{Device: "old", Slave: "s1"}}); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.Device(ctx, "old"); d.LastSlave != "s1" {
		t.Errorf("last slave = %q", d.LastSlave)
	}
}

func TestHeartbeatsSlavesAndTunnels(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	report := func(at time.Time, tunnels ...Tunnel) SlaveReport {
		return SlaveReport{Name: "s1", Host: "h", Port: 2222, User: "u", HostKeys: []string{"ssh-ed25519 AAAA"}, Capacity: 10, At: at, Tunnels: tunnels}
	}
	ch, err := s.RecordHeartbeat(ctx, report(t0, Tunnel{Device: "d1", Forward: "ssh", Port: 20000, Probe: &Probe{OK: true, At: t0}}), t0.Add(-15*time.Second))
	if err != nil || ch != SlaveNew {
		t.Fatalf("first heartbeat = %v, %v", ch, err)
	}
	ch, _ = s.RecordHeartbeat(ctx, report(t0.Add(5*time.Second), Tunnel{Device: "d2", Port: 20001}, Tunnel{Device: "d3", Port: 20002}), t0.Add(-10*time.Second))
	if ch != SlaveSteady {
		t.Errorf("second heartbeat = %v, want steady", ch)
	}
	sl, err := s.Slaves(ctx)
	if err != nil || len(sl) != 1 || sl[0].Tunnels != 2 || !sl[0].Alive || sl[0].HostKeys[0] != "ssh-ed25519 AAAA" || !sl[0].FirstSeen.Equal(t0) {
		t.Fatalf("slaves = %+v, %v", sl, err)
	}
	ts, _ := s.LiveTunnels(ctx)
	if len(ts) != 2 || ts[0].Device != "d2" || ts[0].Probe != nil {
		t.Errorf("tunnels replaced = %+v", ts)
	}
	if n, _ := s.OnlineDevices(ctx); n != 2 {
		t.Errorf("online = %d", n)
	}
	// Found silent as of its first beat: it has beaten since, which wins.
	if changed, err := s.MarkSlaveDead(ctx, "s1", t0, t0.Add(time.Minute), "gone"); err != nil || changed {
		t.Fatalf("MarkSlaveDead of a slave that beat since = %v, %v; want false", changed, err)
	}
	changed, err := s.MarkSlaveDead(ctx, "s1", t0.Add(5*time.Second), t0.Add(time.Minute), "gone")
	if err != nil || !changed {
		t.Fatalf("MarkSlaveDead = %v, %v", changed, err)
	}
	if changed, _ := s.MarkSlaveDead(ctx, "s1", t0.Add(5*time.Second), t0.Add(time.Minute), "gone"); changed {
		t.Error("second MarkSlaveDead changed something")
	}
	if ts, _ := s.LiveTunnels(ctx); len(ts) != 0 {
		t.Errorf("dead slave's tunnels listed: %+v", ts)
	}
	ch, _ = s.RecordHeartbeat(ctx, report(t0.Add(2*time.Minute)), t0.Add(2*time.Minute-15*time.Second))
	if ch != SlaveReturned {
		t.Errorf("heartbeat after death = %v, want returned", ch)
	}
	evs, _ := s.Events(ctx, EventFilter{Slave: "s1"})
	kinds := ""
	for _, e := range evs {
		kinds += e.Kind + " "
	}
	if kinds != "slave-up slave-down slave-up " {
		t.Errorf("slave events = %q", kinds)
	}
}

func TestRevocationsCarryPorts(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	pr := PortRange{30000, 30010}
	for i := range 3 {
		if _, err := s.AddDevice(ctx, fmt.Sprintf("d%d", i), newEd25519(t), []ForwardSpec{{Name: "ssh", Target: "localhost:22"}, {Name: "web", Target: "localhost:80"}}, pr); err != nil {
			t.Fatal(err)
		}
	}
	if seq, _ := s.RevocationSeq(ctx); seq != 1 {
		t.Errorf("seq of an empty log = %d", seq)
	}
	if _, err := s.Revoke(ctx, "d0"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Revoke(ctx, "d0"); err != nil { // no-op: no second revocation
		t.Fatal(err)
	}
	if err := s.Remove(ctx, "d2"); err != nil {
		t.Fatal(err)
	}
	revs, err := s.Revocations(ctx, 0, 0)
	if err != nil || len(revs) != 2 {
		t.Fatalf("revocations = %+v, %v", revs, err)
	}
	if revs[0].Device != "d0" || revs[0].Reason != RevocationRevoked || fmt.Sprint(revs[0].Ports) != "[30000 30001]" {
		t.Errorf("revoke = %+v", revs[0])
	}
	if revs[1].Device != "d2" || revs[1].Reason != RevocationRemoved || fmt.Sprint(revs[1].Ports) != "[30004 30005]" || revs[1].Fingerprint == "" {
		t.Errorf("rm = %+v", revs[1])
	}
	if after, _ := s.Revocations(ctx, revs[0].Seq, 0); len(after) != 1 || after[0].Device != "d2" {
		t.Errorf("after first = %+v", after)
	}
	if seq, _ := s.RevocationSeq(ctx); seq != revs[1].Seq {
		t.Errorf("seq = %d, want %d", seq, revs[1].Seq)
	}
}

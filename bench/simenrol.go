package bench

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/token"
	"github.com/mas4h/mas4h/registry"
)

// simDevice is one simulated device: its name, key and leased port.
type simDevice struct {
	Name   string
	Signer ssh.Signer
	PubKey string // "ssh-ed25519 AAAA…", as a slot request carries it
	Port   int
}

// simKeys derives n ed25519 keys from seed (the i-th key's seed is
// SHA-256(seed, i)), in parallel: the same seed gives the same fleet, and
// 100,000 keys take a couple of seconds rather than a minute of reading
// files.
func simKeys(seed uint64, n int) ([]simDevice, error) {
	devs := make([]simDevice, n)
	workers := runtime.NumCPU()
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf [16]byte
			binary.BigEndian.PutUint64(buf[:8], seed)
			for i := w; i < n; i += workers {
				binary.BigEndian.PutUint64(buf[8:], uint64(i))
				s := sha256.Sum256(buf[:])
				signer, err := ssh.NewSignerFromKey(ed25519.NewKeyFromSeed(s[:]))
				if err != nil {
					errs[w] = err
					return
				}
				devs[i] = simDevice{Name: fmt.Sprintf("sim-d%06d", i), Signer: signer,
					PubKey: registry.AuthorizedKey(signer.PublicKey())}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("deriving device keys: %w", err)
		}
	}
	return devs, nil
}

// simEnrol enrols every device through the registry's own enrolment
// (registry.EnrolDevice: one transaction per device, with its port lease
// and enrol event, as `mas4h device add --db` does), device i leasing
// port pr.Lo+i. Each call is given the one-port range [p, p]: the lease
// query then reads one index entry instead of every leased port, which
// would make enrolling a large fleet quadratic. progress is called every
// 10,000 devices.
func simEnrol(ctx context.Context, st *registry.Store, devs []simDevice, pr registry.PortRange, progress func(done int)) error {
	if len(devs) > pr.Size() {
		return fmt.Errorf("%d devices do not fit in port range %s (%d ports): every forward leases a port unique in the whole registry, "+
			"so one registry holds at most %d one-forward devices; use -devices %d or fewer", len(devs), pr, pr.Size(), pr.Size(), pr.Size())
	}
	for i := range devs {
		p := pr.Lo + i
		d, _, err := st.EnrolDevice(ctx, devs[i].Name, devs[i].Signer.PublicKey(), nil, nil, registry.PortRange{Lo: p, Hi: p}, "mas4h-sim")
		if err != nil {
			return err
		}
		devs[i].Port = d.Forwards[0].RemotePort
		if progress != nil && (i+1)%10000 == 0 {
			progress(i + 1)
		}
	}
	return nil
}

// simSlaveCredentials issues each slave its own credential in the
// registry, as `mas4h slave add NAME` has the master do, and returns the
// credentials (the bearer tokens the slaves send).
func simSlaveCredentials(ctx context.Context, st *registry.Store, names []string) ([]string, error) {
	creds := make([]string, len(names))
	for i, name := range names {
		cred, secret, err := token.NewSlaveCredential(name)
		if err != nil {
			return nil, err
		}
		if _, err := st.SetSlaveCredential(ctx, name, registry.CredentialHash(secret)); err != nil {
			return nil, fmt.Errorf("issuing slave %s a credential: %w", name, err)
		}
		creds[i] = cred
	}
	return creds, nil
}

// simEnrolBeyond writes devices that the registry cannot lease a port to
// (past what the port range holds) with plain SQL, as
// BenchmarkDashboard100k does: the device row, its one forward ssh →
// localhost:22 on port firstPort+i (above 65535: no port is left), and
// its enrol event, in one transaction. Dispatch never reads the port; the
// heartbeats fold it back below 65536 (heartbeatPort). postgres selects
// $N placeholders.
func simEnrolBeyond(ctx context.Context, st *registry.Store, devs []simDevice, firstPort int, postgres bool) error {
	ph := func(n int) string {
		var b []string
		for i := 1; i <= n; i++ {
			if postgres {
				b = append(b, "$"+strconv.Itoa(i))
			} else {
				b = append(b, "?")
			}
		}
		return strings.Join(b, ", ")
	}
	tx, err := st.DB().BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	dev, err := tx.PrepareContext(ctx, `INSERT INTO devices (name, fingerprint, key_type, public_key, status, created_at, updated_at) VALUES (`+ph(7)+`) RETURNING id`)
	if err != nil {
		return fmt.Errorf("writing devices beyond the port range: %w", err)
	}
	fwd, err := tx.PrepareContext(ctx, `INSERT INTO forwards (device_id, position, name, target, probe, remote_port) VALUES (`+ph(6)+`)`)
	if err != nil {
		return fmt.Errorf("writing devices beyond the port range: %w", err)
	}
	evt, err := tx.PrepareContext(ctx, `INSERT INTO events (at, kind, device, detail) VALUES (`+ph(4)+`)`)
	if err != nil {
		return fmt.Errorf("writing devices beyond the port range: %w", err)
	}
	now := time.Now().UTC().UnixNano()
	for i := range devs {
		d := &devs[i]
		d.Port = firstPort + i
		pub := d.Signer.PublicKey()
		fp := registry.Fingerprint(pub)
		var id int64
		if err := dev.QueryRowContext(ctx, d.Name, fp, pub.Type(), d.PubKey, registry.StatusActive, now, now).Scan(&id); err != nil {
			return fmt.Errorf("writing device %s: %w", d.Name, err)
		}
		if _, err := fwd.ExecContext(ctx, id, 0, "ssh", "localhost:22", "", d.Port); err != nil {
			return fmt.Errorf("writing device %s's forward: %w", d.Name, err)
		}
		if _, err := evt.ExecContext(ctx, now, registry.EventEnrol, d.Name,
			fmt.Sprintf("mas4h-sim; key %s; forwards: ssh localhost:22 on port %d", fp, d.Port)); err != nil {
			return fmt.Errorf("writing device %s's enrol event: %w", d.Name, err)
		}
	}
	return tx.Commit()
}

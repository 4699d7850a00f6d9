package registry

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"
)

// Two handles on one registry (two masters) enrol at once, each from
// several goroutines, with some names asked of both (a client retrying on
// the other master): every enrolment either side acknowledged is there
// once, no port is leased twice, the range is used from its bottom with
// no gap, and a name asked of both with one key is one device.
func TestConcurrentEnrolmentOnTwoHandles(t *testing.T) {
	a, loc := openTemp(t)
	b, err := Open(context.Background(), loc)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	pr := PortRange{30000, 39999}
	const workers, each = 4, 25
	keys := make([]ssh.PublicKey, workers*each)
	for i := range keys {
		keys[i] = newEd25519(t)
	}
	var mu sync.Mutex
	acked := map[string]Device{}
	var wg sync.WaitGroup
	for w := range 2 * workers {
		st := a
		if w%2 == 1 {
			st = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				// Workers w and w^1 share their names: both masters are asked.
				n := (w/2)*each + i
				d, _, err := st.EnrolDevice(ctx, fmt.Sprintf("dev-%d", n), keys[n],
					[]ForwardSpec{{Name: "ssh", Target: "localhost:22"}, {Name: "web", Target: "localhost:80"}}, nil, pr, "")
				if err != nil {
					t.Errorf("enrolling dev-%d: %v", n, err)
					return
				}
				mu.Lock()
				if prev, ok := acked[d.Name]; ok && !prev.CreatedAt.Equal(d.CreatedAt) {
					t.Errorf("dev-%d acknowledged twice as two devices (created %s, %s)", n, prev.CreatedAt, d.CreatedAt)
				}
				acked[d.Name] = d
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(acked) != workers*each {
		t.Fatalf("%d devices acknowledged, want %d", len(acked), workers*each)
	}
	all, err := a.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ports := map[int]string{}
	for _, d := range all {
		if _, ok := acked[d.Name]; !ok {
			t.Errorf("device %s in the registry was never acknowledged", d.Name)
		}
		for _, f := range d.Forwards {
			if other, dup := ports[f.RemotePort]; dup {
				t.Errorf("port %d leased to %s and %s", f.RemotePort, other, d.Name)
			}
			ports[f.RemotePort] = d.Name
		}
	}
	if len(all) != workers*each || len(ports) != 2*workers*each {
		t.Errorf("%d devices with %d ports, want %d and %d", len(all), len(ports), workers*each, 2*workers*each)
	}
	for p := pr.Lo; p < pr.Lo+len(ports); p++ {
		if _, ok := ports[p]; !ok {
			t.Errorf("port %d left unleased below the highest lease: leases are not the lowest free", p)
		}
	}
}

package registry

import (
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestNewEnrolment(t *testing.T) {
	key := newEd25519(t)
	pr := PortRange{20000, 20002}
	for _, tc := range []struct {
		name     string
		forwards []ForwardSpec
		want     []ForwardSpec
	}{
		{"d1", nil, []ForwardSpec{DefaultForward()}},
		{"pi-4.lab_2", []ForwardSpec{{Name: "ssh", Target: "LOCALHOST:0022"}, {Name: "web", Target: "[0:0::1]:80", Probe: "http"}},
			[]ForwardSpec{{Name: "ssh", Target: "LOCALHOST:22"}, {Name: "web", Target: "[::1]:80", Probe: "http"}}},
		{"three", []ForwardSpec{{Name: "a", Target: "h:1"}, {Name: "b", Target: "h:2", Probe: "banner:^OK"}, {Name: "c", Target: "h:3", Probe: "send-expect:PING|PONG"}},
			[]ForwardSpec{{Name: "a", Target: "h:1"}, {Name: "b", Target: "h:2", Probe: "banner:^OK"}, {Name: "c", Target: "h:3", Probe: "send-expect:PING|PONG"}}},
	} {
		e, err := newEnrolment(tc.name, key, tc.forwards, pr)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		want := enrolment{name: tc.name, fingerprint: Fingerprint(key), keyType: "ssh-ed25519", publicKey: AuthorizedKey(key), forwards: tc.want, ports: pr}
		if !reflect.DeepEqual(e, want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.name, e, want)
		}
	}
}

func TestNewEnrolmentRefusals(t *testing.T) {
	good := newEd25519(t)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	weak, err := ssh.NewPublicKey(&small.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	dsa, _, _, _, err := ssh.ParseAuthorizedKey([]byte(dsaLine))
	if err != nil {
		t.Fatal(err)
	}
	pr := PortRange{20000, 20001}
	fw := func(specs ...string) []ForwardSpec {
		var out []ForwardSpec
		for _, s := range specs {
			name, target, _ := strings.Cut(s, "=")
			target, probe, _ := strings.Cut(target, ",")
			out = append(out, ForwardSpec{Name: name, Target: target, Probe: probe})
		}
		return out
	}
	for _, tc := range []struct {
		what     string
		name     string
		key      ssh.PublicKey
		forwards []ForwardSpec
		pr       PortRange
		want     error
		text     string
	}{
		{"empty name", "", good, nil, pr, ErrInvalid, "device name must be"},
		{"bad name", "Bad Name", good, nil, pr, ErrInvalid, `got "Bad Name"`},
		{"name with a slash", "../etc", good, nil, pr, ErrInvalid, "device name must be"},
		{"long name", strings.Repeat("a", 64), good, nil, pr, ErrInvalid, "device name must be"},
		{"no key", "d1", nil, nil, pr, ErrInvalid, "no public key"},
		{"small RSA key", "d1", weak, nil, pr, ErrInvalid, "RSA key is 1024 bits"},
		{"DSA key", "d1", dsa, nil, pr, ErrInvalid, "DSA"},
		{"empty range", "d1", good, nil, PortRange{}, ErrInvalid, "port range 0-0"},
		{"range upside down", "d1", good, nil, PortRange{2, 1}, ErrInvalid, "LO <= HI"},
		{"range past 65535", "d1", good, nil, PortRange{65535, 65536}, ErrInvalid, "HI <= 65535"},
		{"bad forward name", "d1", good, fw("Web=h:1"), pr, ErrInvalid, "forward name must be"},
		{"forward name twice", "d1", good, fw("a=h:1", "a=h:2"), pr, ErrInvalid, `forward name "a" given twice`},
		{"target without port", "d1", good, fw("a=h"), pr, ErrInvalid, "forward a: target must be host:port"},
		{"target with a shell", "d1", good, fw("a=h;rm -rf /:1"), pr, ErrInvalid, "target must be host:port"},
		{"target with a newline", "d1", good, fw("a=h\n:1"), pr, ErrInvalid, "target must be host:port"},
		{"port 0 target", "d1", good, fw("a=h:0"), pr, ErrInvalid, "target must be host:port"},
		{"unknown probe", "d1", good, fw("a=h:1,ping"), pr, ErrInvalid, "unknown probe"},
		{"bad probe regex", "d1", good, fw("a=h:1,banner:("), pr, ErrInvalid, "bad regex"},
		{"more forwards than the range", "d1", good, fw("a=h:1", "b=h:2", "c=h:3"), pr, ErrRangeFull, "3 forwards do not fit in port range 20000-20001"},
	} {
		_, err := newEnrolment(tc.name, tc.key, tc.forwards, tc.pr)
		if !errors.Is(err, tc.want) || err == nil || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%s: %v, want %v mentioning %q", tc.what, err, tc.want, tc.text)
		}
	}
}

// A retried enrolment whose first answer was lost gets the same device
// back and writes nothing; the same name with anything else different is
// still refused.
func TestEnrolmentIsIdempotent(t *testing.T) {
	s, _ := openTemp(t)
	ctx := t.Context()
	pr := PortRange{Lo: 20000, Hi: 20009}
	key := newEd25519(t)
	fw := []ForwardSpec{{Name: "ssh", Target: "localhost:22"}, {Name: "web", Target: "192.168.1.10:80", Probe: "http"}}
	labels := map[string]string{"site": "lyon"}
	first, created, err := s.EnrolDevice(ctx, "pi1", key, fw, labels, pr, "")
	if err != nil || !created {
		t.Fatalf("first enrolment: created=%v, %v", created, err)
	}
	events, _ := s.LastEventID(ctx)
	again, created, err := s.EnrolDevice(ctx, "pi1", key, fw, labels, pr, "")
	if err != nil || created || again.Fingerprint != first.Fingerprint || again.Forwards[1].RemotePort != first.Forwards[1].RemotePort {
		t.Fatalf("the same enrolment again = %+v, created=%v, %v; want the first device, not created", again, created, err)
	}
	if after, _ := s.LastEventID(ctx); after != events {
		t.Errorf("a repeated enrolment wrote %d events", after-events)
	}
	for what, try := range map[string]func() error{
		"another key": func() error { _, _, err := s.EnrolDevice(ctx, "pi1", newEd25519(t), fw, labels, pr, ""); return err },
		"other forwards": func() error {
			_, _, err := s.EnrolDevice(ctx, "pi1", key, fw[:1], labels, pr, "")
			return err
		},
		"other labels": func() error { _, _, err := s.EnrolDevice(ctx, "pi1", key, fw, nil, pr, ""); return err },
	} {
		if err := try(); !errors.Is(err, ErrExists) {
			t.Errorf("%s under the same name: %v, want ErrExists", what, err)
		}
	}
	if _, err := s.Revoke(ctx, "pi1"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.EnrolDevice(ctx, "pi1", key, fw, labels, pr, ""); !errors.Is(err, ErrExists) {
		t.Errorf("re-enrolling a revoked device: %v, want ErrExists (revoked stays revoked)", err)
	}
}

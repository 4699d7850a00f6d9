package bench

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/mas4h/mas4h/process"
	"golang.org/x/crypto/ssh"
)

// device is one simulated fleet member: its key on disk, enrolled in the
// registry, and the port it leased.
type device struct {
	Name    string
	KeyPath string // OpenSSH private key, for ssh -i
	AuthKey string // "ssh-ed25519 AAAA…"
	FP      string // SHA256:…
	Type    string
	B64     string
	Ports   []int
	Line    string     // the authorized_keys line the hook must print
	Signer  ssh.Signer // in-memory key, for the load generator
}

// newDevice generates an ed25519 key for name and writes it under dir.
func newDevice(dir, name string) (device, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return device{}, fmt.Errorf("generating key for %s: %w", name, err)
	}
	block, err := ssh.MarshalPrivateKey(priv, name)
	if err != nil {
		return device{}, fmt.Errorf("encoding key for %s: %w", name, err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return device{}, fmt.Errorf("public key for %s: %w", name, err)
	}
	d := device{
		Name:    name,
		KeyPath: filepath.Join(dir, name),
		AuthKey: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))),
		FP:      ssh.FingerprintSHA256(sshPub),
		Type:    sshPub.Type(),
		B64:     base64.StdEncoding.EncodeToString(sshPub.Marshal()),
	}
	if err := os.WriteFile(d.KeyPath, pem.EncodeToMemory(block), 0o600); err != nil {
		return device{}, fmt.Errorf("writing key for %s: %w", name, err)
	}
	if err := os.WriteFile(d.KeyPath+".pub", []byte(d.AuthKey+" "+name+"\n"), 0o644); err != nil {
		return device{}, fmt.Errorf("writing key for %s: %w", name, err)
	}
	return d, nil
}

// newMemDevice generates an ed25519 key for name, kept in memory only.
func newMemDevice(name string) (device, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return device{}, fmt.Errorf("generating key for %s: %w", name, err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return device{}, fmt.Errorf("signer for %s: %w", name, err)
	}
	sshPub := signer.PublicKey()
	return device{
		Name:    name,
		AuthKey: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))),
		FP:      ssh.FingerprintSHA256(sshPub),
		Type:    sshPub.Type(),
		B64:     base64.StdEncoding.EncodeToString(sshPub.Marshal()),
		Signer:  signer,
	}, nil
}

// expectedLine is the authorized_keys line DESIGN.md promises for a device:
// restricted to remote forwarding of its leased ports under the three
// loopback names. It is built here independently of mas4h's template so the
// harness notices when the hook prints something else.
func expectedLine(authKey string, ports []int) string {
	var b strings.Builder
	b.WriteString("restrict,port-forwarding")
	for _, p := range ports {
		ps := strconv.Itoa(p)
		b.WriteString(`,permitlisten="localhost:` + ps + `",permitlisten="127.0.0.1:` + ps + `",permitlisten="[::1]:` + ps + `"`)
	}
	return b.String() + " " + authKey
}

// enrol adds every device to the registry with the mas4h CLI and reads back
// the leased ports from `device list -o json`.
func enrol(ctx context.Context, bin, db, portRange string, devs []device) error {
	for _, d := range devs {
		if _, err := runCmd(ctx, bin, "device", "add", d.Name, "--key", d.KeyPath+".pub", "--db", db, "--port-range", portRange); err != nil {
			return err
		}
	}
	out, err := runCmd(ctx, bin, "device", "list", "-o", "json", "--db", db)
	if err != nil {
		return err
	}
	var listed []struct {
		Name     string `json:"name"`
		Forwards []struct {
			RemotePort int `json:"remote_port"`
		} `json:"forwards"`
	}
	if err := json.Unmarshal(out, &listed); err != nil {
		return fmt.Errorf("parsing device list: %w", err)
	}
	ports := map[string][]int{}
	for _, l := range listed {
		for _, f := range l.Forwards {
			ports[l.Name] = append(ports[l.Name], f.RemotePort)
		}
	}
	for i := range devs {
		p := ports[devs[i].Name]
		if len(p) == 0 {
			return fmt.Errorf("device %s has no leased port in the registry", devs[i].Name)
		}
		sort.Ints(p)
		devs[i].Ports = p
		devs[i].Line = expectedLine(devs[i].AuthKey, p)
	}
	return nil
}

// runCmd runs a short command; its error carries argv and stderr.
func runCmd(ctx context.Context, name string, args ...string) ([]byte, error) {
	return process.Exec{}.Run(ctx, process.Command(name, args...))
}

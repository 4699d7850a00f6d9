package process

import (
	"context"
	"errors"
	"os/exec"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestFakeScript(t *testing.T) {
	f := &Fake{Handle: func(c Cmd) ([]byte, error) { return []byte("default"), nil }}
	f.On("useradd", "", Exit(9, "useradd: user 'x' already exists\n"))
	f.On("iptables -V", "iptables v1.8.9 (nf_tables)", nil)
	ctx := context.Background()

	_, err := f.Run(ctx, Command("useradd", "--system", "x"))
	if err == nil || err.Error() != "running useradd --system x: exit status 9: useradd: user 'x' already exists" || ExitCode(err) != 9 {
		t.Errorf("useradd: %v", err)
	}
	if out, err := f.Run(ctx, Command("iptables", "-V")); err != nil || string(out) != "iptables v1.8.9 (nf_tables)" {
		t.Errorf("iptables -V: %q, %v", out, err)
	}
	c := Command("nft", "list", "tables")
	c.Stdin = []byte("x")
	if out, _ := f.Run(ctx, c); string(out) != "default" {
		t.Errorf("unscripted: %q", out)
	}
	want := []string{"useradd --system x", "iptables -V", "nft list tables"}
	if got := f.Commands(); !slices.Equal(got, want) {
		t.Errorf("commands %q, want %q", got, want)
	}
	if string(f.Calls()[2].Stdin) != "x" {
		t.Error("stdin not recorded")
	}
}

func TestFakeLookPath(t *testing.T) {
	var f Fake
	if p, err := f.LookPath("ssh"); err != nil || p != "/usr/bin/ssh" {
		t.Errorf("zero Fake: %q, %v", p, err)
	}
	f.Paths = map[string]string{"dbclient": "/usr/bin/dbclient"}
	if _, err := f.LookPath("ssh"); !errors.Is(err, exec.ErrNotFound) {
		t.Errorf("missing program: %v", err)
	}
}

func TestFakeStart(t *testing.T) {
	f := &Fake{}
	ctx, cancel := context.WithCancel(context.Background())
	p, err := f.Start(ctx, Command("ssh", "-N"))
	if err != nil {
		t.Fatal(err)
	}
	q, _ := f.Start(context.Background(), Command("sshd", "-D"))
	if p.Pid() == q.Pid() {
		t.Error("two processes share a pid")
	}
	cancel()
	<-p.Done()
	if err := p.Wait(); err == nil || err.Error() != "running ssh -N: signal: terminated" {
		t.Errorf("Wait after cancel: %v", err)
	}
	fq := f.Processes()[1]
	fq.Signal(unix.SIGHUP)
	fq.Exit(Exit(255, "fatal"))
	if err := q.Wait(); ExitCode(err) != 255 || err.Error() != "running sshd -D: exit status 255: fatal" {
		t.Errorf("Wait: %v", err)
	}
	if s := fq.Signals(); len(s) != 1 || s[0] != unix.SIGHUP {
		t.Errorf("signals %v", s)
	}
	f.On("dbclient", "", Exit(1, "no"))
	if _, err := f.Start(ctx, Command("dbclient")); ExitCode(err) != 1 {
		t.Errorf("scripted start failure: %v", err)
	}
}

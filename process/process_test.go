//go:build linux

// The runner against Linux itself (/proc, ambient capabilities, the
// parent-death signal); sysproc_other.go has the macOS variants.

package process

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"golang.org/x/sys/unix"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("MAS4H_E2E") != "" {
			t.Fatal("MAS4H_E2E is set: this test needs root")
		}
		t.Skip("needs root")
	}
}

func TestRunOutputEnvDirStdin(t *testing.T) {
	dir := t.TempDir()
	c := Command("sh", "-c", `pwd; echo "$MAS4H_X"; cat`)
	c.Env = []string{"MAS4H_X=from env"}
	c.Dir = dir
	c.Stdin = []byte("from stdin\n")
	out, err := Exec{}.Run(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if want := dir + "\nfrom env\nfrom stdin\n"; string(out) != want {
		t.Errorf("output %q, want %q", out, want)
	}
}

func TestRunErrorCarriesArgvAndStderr(t *testing.T) {
	c := Command("sh", "-c", "echo partial; echo \"useradd: user 'x' already exists\" >&2; exit 9", "useradd")
	out, err := Exec{}.Run(context.Background(), c)
	want := `running sh -c "echo partial; echo \"useradd: user 'x' already exists\" >&2; exit 9" useradd: exit status 9: useradd: user 'x' already exists`
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant  %s", err, want)
	}
	if ExitCode(err) != 9 || string(out) != "partial\n" {
		t.Errorf("code %d, output %q", ExitCode(err), out)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Errorf("%T does not unwrap to *exec.ExitError", err)
	}
}

func TestRunStderrIsCutToItsEnd(t *testing.T) {
	_, err := Exec{}.Run(context.Background(), Command("sh", "-c", `i=0; while [ $i -lt 2000 ]; do echo "line $i" >&2; i=$((i+1)); done; exit 1`))
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("err = %v", err)
	}
	if len(e.Stderr) > maxStderr+8 || !strings.HasPrefix(e.Stderr, "…line ") || !strings.HasSuffix(e.Stderr, "line 1999") {
		t.Errorf("stderr of %d bytes: %.40q…%q", len(e.Stderr), e.Stderr, e.Stderr[max(0, len(e.Stderr)-20):])
	}
}

func TestRunNotFound(t *testing.T) {
	_, err := Exec{}.Run(context.Background(), Command("mas4h-no-such-program", "-x"))
	if !errors.Is(err, exec.ErrNotFound) || ExitCode(err) != -1 || !strings.HasPrefix(err.Error(), "running mas4h-no-such-program -x: ") {
		t.Fatalf("err = %v", err)
	}
}

func TestRunCombinedAndStderrWriter(t *testing.T) {
	var seen bytes.Buffer
	c := Command("sh", "-c", "echo out; echo err >&2")
	c.Combined = true
	c.Stderr = &seen
	out, err := Exec{}.Run(context.Background(), c)
	if err != nil || string(out) != "out\nerr\n" {
		t.Fatalf("output %q, %v", out, err)
	}
	if seen.String() != "out\nerr\n" {
		t.Errorf("Stderr writer got %q", seen.String())
	}
}

func TestRunCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := (Exec{}).Run(ctx, Command("sleep", "100")); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestRunAsUserWithAmbientCap(t *testing.T) {
	needRoot(t)
	c := Command("sh", "-c", `id -u; id -g; id -G; grep CapAmb /proc/self/status`)
	c.Cred = &Cred{UID: 65534, GID: 65533}
	c.AmbientCaps = []uintptr{unix.CAP_NET_BIND_SERVICE}
	out, err := Exec{}.Run(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	// No supplementary groups: id -G lists the primary group only.
	if want := "65534\n65533\n65533\nCapAmb:\t0000000000000400\n"; string(out) != want {
		t.Errorf("output %q, want %q", out, want)
	}
}

func TestStartDetached(t *testing.T) {
	needRoot(t)
	c := Command("sleep", "100")
	c.Cred = &Cred{UID: 65534, GID: 65534}
	p, err := Exec{}.Start(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Signal(unix.SIGKILL)
	sid, err := unix.Getsid(p.Pid())
	if err != nil || sid != p.Pid() {
		t.Errorf("session %d (%v), want its own (%d)", sid, err, p.Pid())
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+strconv.Itoa(p.Pid()), &st); err != nil || st.Uid != 65534 {
		t.Errorf("runs as uid %d (%v), want 65534", st.Uid, err)
	}
	select {
	case <-p.Done():
		t.Fatal("exited early")
	default:
	}
	if err := p.Signal(unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	if err := p.Wait(); err == nil || !strings.Contains(err.Error(), "running sleep 100: signal: terminated") || ExitCode(err) != -1 {
		t.Errorf("Wait = %v", err)
	}
}

func TestStartStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	stderr := &syncBuffer{ready: make(chan struct{})}
	c := Command("sh", "-c", `trap 'echo got TERM >&2; exit 3' TERM; echo ready >&2; while :; do sleep 0.1; done`)
	c.Stderr = stderr
	p, err := Exec{}.Start(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-stderr.ready: // the trap is set
	case <-p.Done():
		t.Fatalf("exited: %v", p.Wait())
	}
	cancel()
	err = p.Wait()
	if ExitCode(err) != 3 || !strings.Contains(stderr.String(), "got TERM") {
		t.Errorf("Wait = %v (code %d), stderr %q", err, ExitCode(err), stderr.String())
	}
}

func TestStartNotFound(t *testing.T) {
	_, err := Exec{}.Start(context.Background(), Command("/nonexistent/prog"))
	if !errors.Is(err, os.ErrNotExist) || !strings.HasPrefix(err.Error(), "running /nonexistent/prog: ") {
		t.Fatalf("err = %v", err)
	}
}

// syncBuffer is a locked buffer that closes ready on its first write.
type syncBuffer struct {
	mu    sync.Mutex
	b     bytes.Buffer
	ready chan struct{}
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Len() == 0 && len(p) > 0 {
		close(s.ready)
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestMain doubles as the helper of TestDieWithParent: a parent that starts
// a child with DieWithParent, says its pid and waits to be killed.
func TestMain(m *testing.M) {
	if os.Getenv("MAS4H_PROCESS_HELPER") == "1" {
		c := Command("sleep", "1000")
		c.DieWithParent = true
		p, err := Exec{}.Start(context.Background(), c)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Println(p.Pid())
		p.Wait()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestDieWithParent(t *testing.T) {
	parent := exec.Command(os.Args[0], "-test.run=^$")
	parent.Env = append(os.Environ(), "MAS4H_PROCESS_HELPER=1")
	out, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	pid, perr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || perr != nil {
		parent.Process.Kill()
		t.Fatalf("helper said %q: %v", line, err)
	}
	defer unix.Kill(pid, unix.SIGKILL)
	if !running(pid) {
		t.Fatalf("the child %d is not running", pid)
	}
	parent.Process.Kill()
	parent.Wait()
	testkit.Eventually(t, 10*time.Second, func() bool { return !running(pid) }, "the child %d outlived its parent", pid)
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z'
}

package main

import (
	"bytes"
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func runAgent(args ...string) (string, string, int) {
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return out.String(), errb.String(), code
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--help"}, 0, "--ssh-client"},
		{[]string{"--version"}, 0, "mas4h-agent dev"},
		{[]string{"--key", "/k"}, 2, "--master is required"},
		{[]string{"--master", "http://m:8080"}, 2, "--key is required"},
		{[]string{"--master", "ftp://m", "--key", "/k"}, 2, "master URL must look like"},
		{[]string{"--master", "http://m:8080", "--key", "/k", "--ssh-client", "putty"}, 2, "--ssh-client must be"},
		{[]string{"--master", "http://m:8080", "--key", "/k", "--log-format", "xml"}, 2, "--log-format"},
		{[]string{"--bogus"}, 2, "flag provided but not defined"},
		{[]string{"--master", "http://m:8080", "--key", "/k", "extra"}, 2, "unexpected arguments"},
	} {
		out, errs, code := runAgent(tc.args...)
		if code != tc.code || !strings.Contains(out+errs, tc.want) {
			t.Errorf("%v: exit %d (want %d), output %q lacks %q", tc.args, code, tc.code, out+errs, tc.want)
		}
	}
}

// The agent must build static: nothing that needs cgo, and none of the
// master's weight.
func TestDepsAreStaticAndSmall(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v: %s", err, out)
	}
	for _, bad := range []string{"runtime/cgo", "github.com/mattn/go-sqlite3", "github.com/gin-gonic/gin", "github.com/spf13/cobra", "github.com/shirou/gopsutil", "github.com/mas4h/mas4h/registry\n", "github.com/mas4h/mas4h/sshd"} {
		if strings.Contains(string(out)+"\n", bad) {
			t.Errorf("mas4h-agent depends on %s", strings.TrimSpace(bad))
		}
	}
}

func TestBuildsStatic(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary; skipped only under testing.Short")
	}
	bin := filepath.Join(t.TempDir(), "mas4h-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v: %s", err, out)
	}
	if err := CheckStatic(bin); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Usage: mas4h-agent") {
		t.Fatalf("--help: %v: %s", err, out)
	}
}

// CheckStatic fails for an ELF file with an interpreter or a dynamic
// section (what ldd would list libraries for).
func CheckStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			return &notStatic{path, p.Type.String()}
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		return &notStatic{path, strings.Join(libs, ", ")}
	}
	return nil
}

type notStatic struct{ path, what string }

func (e *notStatic) Error() string { return e.path + " is not statically linked: " + e.what }

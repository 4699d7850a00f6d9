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
		{[]string{"--master", "https://m:8080", "--key", "/k", "--ssh-client", "putty"}, 2, "--ssh-client must be"},
		{[]string{"--master", "https://m:8080", "--key", "/k", "--log-format", "xml"}, 2, "--log-format"},
		{[]string{"--bogus"}, 2, "flag provided but not defined"},
		{[]string{"--master", "http://m:8080", "--key", "/k"}, 2, "use https://, or accept this with --insecure-http"},
		{[]string{"--master", "http://m:8080", "--key", "/k", "--insecure-http", "--master-ca", "/ca.pem"}, 2, "--master-ca needs an https:// master"},
		{[]string{"--master", "https://m:8080", "--key", "/k", "extra"}, 2, "unexpected arguments"},
	} {
		out, errs, code := runAgent(tc.args...)
		if code != tc.code || !strings.Contains(out+errs, tc.want) {
			t.Errorf("%v: exit %d (want %d), output %q lacks %q", tc.args, code, tc.code, out+errs, tc.want)
		}
	}
}

// The agent runs on routers and NAS boxes, built with CGO_ENABLED=0 for
// arm, arm64 and mips, and on Macs: for Linux and macOS alike it must link no cgo and none of the master's or the
// slave's weight (gin, SQLite, cobra, gopsutil, the registry). Every
// package it links is allowed here: the standard library but runtime/cgo,
// the mas4h packages and the modules below. Anything else fails, with the
// chain of imports that pulled it in.
func TestDepsAreStaticAndSmall(t *testing.T) {
	const self = "github.com/mas4h/mas4h/cmd/mas4h-agent"
	mas4h := map[string]bool{
		self:                                             true,
		"github.com/mas4h/mas4h/agent":                   true,
		"github.com/mas4h/mas4h/master/client":           true,
		"github.com/mas4h/mas4h/master/wire":             true,
		"github.com/mas4h/mas4h/atomicfile":              true, // its state files
		"github.com/mas4h/mas4h/backoff":                 true, // reconnect delays
		"github.com/mas4h/mas4h/process":                 true, // the ssh client
		"github.com/mas4h/mas4h/cmd/internal/agentflags": true, // the agent's flags, shared with mas4h agent
		"github.com/mas4h/mas4h/sshsig":                  true, // signs slot requests
		"github.com/mas4h/mas4h/launchd":                 true, // the macOS daemon's plist
	}
	modules := map[string]bool{
		"golang.org/x/crypto":           true, // ssh keys, slot signatures
		"golang.org/x/sys":              true, // system calls, pure Go
		"github.com/google/renameio/v2": true, // atomicfile's temp files
	}
	for _, goos := range []string{"linux", "darwin"} {
		t.Run(goos, func(t *testing.T) { checkDeps(t, goos, self, mas4h, modules) })
	}
}

func checkDeps(t *testing.T, goos, self string, mas4h, modules map[string]bool) {
	cmd := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}}|{{.Standard}}|{{with .Module}}{{.Path}}{{end}}|{{join .Imports " "}}`, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+goos)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v: %s", err, stderr.Bytes())
	}
	imports := map[string][]string{}
	var refused []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.SplitN(line, "|", 4)
		if len(f) != 4 {
			t.Fatalf("go list printed %q", line)
		}
		pkg, std, mod := f[0], f[1] == "true", f[2]
		imports[pkg] = strings.Fields(f[3])
		switch {
		case std && pkg != "runtime/cgo":
		case mod == "github.com/mas4h/mas4h" && mas4h[pkg]:
		case mod != "github.com/mas4h/mas4h" && modules[mod]:
		default:
			refused = append(refused, pkg)
		}
	}
	if !mas4h[self] || imports[self] == nil {
		t.Fatalf("go list did not list %s", self)
	}
	for _, pkg := range refused {
		t.Errorf("mas4h-agent links %s, which is not on its allow list: %s", pkg, strings.Join(importChain(imports, self, pkg), " → "))
	}
}

// importChain is the shortest chain of imports from root to pkg.
func importChain(imports map[string][]string, root, pkg string) []string {
	from := map[string]string{root: ""}
	queue := []string{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == pkg {
			var chain []string
			for ; p != ""; p = from[p] {
				chain = append([]string{p}, chain...)
			}
			return chain
		}
		for _, q := range imports[p] {
			if _, seen := from[q]; !seen {
				from[q] = p
				queue = append(queue, q)
			}
		}
	}
	return []string{pkg}
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

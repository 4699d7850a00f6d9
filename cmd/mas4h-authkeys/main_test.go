package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The hook starts twice per authentication: every package it links adds to
// every login. It must build static and stay off the heavy ones (each of
// these was measured to add start-up time, or is cgo).
func TestDepsAreStaticAndSmall(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v: %s", err, out)
	}
	deps := map[string]bool{}
	for _, d := range strings.Fields(string(out)) {
		deps[d] = true
	}
	for _, bad := range []string{
		"runtime/cgo", "database/sql", "github.com/mattn/go-sqlite3", "golang.org/x/crypto/ssh",
		"github.com/gin-gonic/gin", "github.com/prometheus/client_golang/prometheus",
		"net", "encoding/json", "regexp", "fmt", "crypto/rsa", "math/big", "text/template",
		"github.com/mas4h/mas4h/sshd/authkeys", "github.com/mas4h/mas4h/registry", "github.com/mas4h/mas4h/master/wire",
	} {
		if deps[bad] {
			t.Errorf("mas4h-authkeys depends on %s", bad)
		}
	}
	// Of mas4h and third parties, only these: leaf packages with no
	// start-up cost.
	allowed := map[string]bool{
		"github.com/mas4h/mas4h/cmd/mas4h-authkeys":       true,
		"github.com/mas4h/mas4h/sshd/authkeys/hookclient": true,
		"github.com/mas4h/mas4h/names":                    true,
		"github.com/mas4h/mas4h/sshd/statedir":            true,
		"golang.org/x/sys/unix":                           true,
	}
	for d := range deps {
		if strings.Contains(strings.Split(d, "/")[0], ".") && !allowed[d] {
			t.Errorf("mas4h-authkeys depends on %s", d)
		}
	}
}

// Built as the Makefile builds it, the hook is a static binary, and when no
// daemon answers it execs the full binary next to it with the cache-only
// command line (here a script that prints its arguments).
func TestBuildsStaticAndFallsBack(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary; skipped only under testing.Short")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "mas4h-authkeys")
	cmd := exec.Command("go", "build", "-ldflags", "-s -w", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v: %s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Fatalf("%s is not statically linked: %s", bin, p.Type)
		}
	}

	if err := os.WriteFile(filepath.Join(dir, "mas4h"), []byte("#!/bin/sh\necho \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state") // no daemon socket
	args := []string{"mas4h-tunnel", "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s", "ssh-ed25519",
		"AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"}
	out, err := exec.Command(bin, append([]string{"--state-dir", state, "--"}, args...)...).Output()
	f1 := strings.Fields(string(out))
	if err != nil || len(f1) != 11 || strings.Join(f1[:3], " ") != "authkeys --cache-only --budget-ms" ||
		strings.Join(f1[4:], " ") != "--state-dir "+state+" -- "+strings.Join(args, " ") {
		t.Fatalf("fallback: %v, ran with %q", err, out)
	}

	// Refused arguments: silent exit 1, no fallback.
	out, err = exec.Command(bin, "--state-dir", state, "--", "$(id)", args[1], args[2], args[3]).Output()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || len(out) != 0 {
		t.Fatalf("refused arguments: %v, output %q", err, out)
	}
}

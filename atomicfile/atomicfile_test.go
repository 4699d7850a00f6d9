package atomicfile

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

func TestWriteContentAndMode(t *testing.T) {
	old := syscall.Umask(0o077) // the mode is exact, whatever the umask
	defer syscall.Umask(old)
	for _, mode := range []os.FileMode{0o600, 0o644, 0o755, 0o640} {
		path := filepath.Join(t.TempDir(), "f")
		if err := Write(path, []byte("hello\n"), mode); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != "hello\n" {
			t.Fatalf("content = %q, %v", got, err)
		}
		fi, _ := os.Stat(path)
		if fi.Mode() != mode {
			t.Errorf("mode = %v, want %v", fi.Mode(), mode)
		}
	}
}

func TestWriteReplaces(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	for _, s := range []string{"one", "two, longer", "3"} {
		if err := Write(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(path); string(got) != s {
			t.Fatalf("content = %q, want %q", got, s)
		}
	}
	assertOnly(t, dir, "f")
}

func TestWriteOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("MAS4H_E2E") != "" {
			t.Fatal("MAS4H_E2E is set: chown needs root")
		}
		t.Skip("chown needs root")
	}
	path := filepath.Join(t.TempDir(), "f")
	if err := Write(path, []byte("x"), 0o640, Owner(65534, 65533)); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != 65534 || st.Gid != 65533 || fi.Mode() != 0o640 {
		t.Errorf("owner %d:%d mode %v, want 65534:65533 0640", st.Uid, st.Gid, fi.Mode())
	}
	// Set-ID bits survive the chown.
	if err := Write(path, []byte("x"), 0o750|fs.ModeSetgid, Owner(0, 65533)); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode() != 0o750|fs.ModeSetgid {
		t.Errorf("mode = %v, want setgid 0750", fi.Mode())
	}
}

// TestReaderNeverSeesPartialFile reads while another goroutine rewrites the
// file with contents of different lengths: each read is one whole version.
func TestReaderNeverSeesPartialFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	versions := [][]byte{bytes.Repeat([]byte("a"), 1<<16), bytes.Repeat([]byte("b"), 3<<16), []byte("c")}
	if err := Write(path, versions[0], 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	var bad []string
	var mu sync.Mutex
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				got, err := os.ReadFile(path)
				if err != nil || !isVersion(got, versions) {
					mu.Lock()
					bad = append(bad, firstBytes(got)+" "+errString(err))
					mu.Unlock()
				}
			}
		}()
	}
	for i := range 150 {
		if err := Write(path, versions[i%len(versions)], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	wg.Wait()
	if len(bad) > 0 {
		t.Fatalf("%d reads saw a partial or missing file, first: %s", len(bad), bad[0])
	}
}

func isVersion(b []byte, versions [][]byte) bool {
	for _, v := range versions {
		if bytes.Equal(b, v) {
			return true
		}
	}
	return false
}

func firstBytes(b []byte) string { return string(b[:min(len(b), 8)]) }

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestFailureLeavesNoTempFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := Write(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	var checked string
	err := Write(path, []byte("new"), 0o644, Check(func(tmp string) error {
		b, _ := os.ReadFile(tmp)
		checked = string(b)
		return errors.New("bad config")
	}))
	if err == nil || !strings.Contains(err.Error(), "bad config") || !strings.Contains(err.Error(), path) {
		t.Fatalf("err = %v, want the check's error with the path", err)
	}
	if checked != "new" {
		t.Errorf("the check saw %q, want the new content", checked)
	}
	if got, _ := os.ReadFile(path); string(got) != "old" {
		t.Errorf("a failed check changed the file to %q", got)
	}
	assertOnly(t, dir, "f")

	// The rename fails: the destination is a non-empty directory.
	sub := filepath.Join(dir, "d")
	if err := os.MkdirAll(filepath.Join(sub, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Write(sub, []byte("x"), 0o644); err == nil {
		t.Fatal("writing over a directory succeeded")
	}
	assertOnly(t, dir, "d", "f")
}

func TestMissingDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "f")
	err := Write(path, []byte("x"), 0o644)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "directory "+filepath.Dir(path)+" does not exist") {
		t.Fatalf("err = %v, want a clear missing directory error", err)
	}
}

func TestSymlinkIsReplacedNotFollowed(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("target"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := Write(link, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(target); string(got) != "target" {
		t.Errorf("the link's target was written: %q", got)
	}
	if fi, _ := os.Lstat(link); !fi.Mode().IsRegular() {
		t.Errorf("link is %v, want a regular file", fi.Mode())
	}
}

func TestWriteIfChanged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	steps := []struct {
		data    string
		mode    os.FileMode
		changed bool
	}{
		{"a", 0o644, true},
		{"a", 0o644, false},
		{"a", 0o600, true}, // the mode alone
		{"b", 0o600, true},
		{"b", 0o600, false},
	}
	for i, s := range steps {
		changed, err := WriteIfChanged(path, []byte(s.data), s.mode)
		if err != nil {
			t.Fatal(err)
		}
		if changed != s.changed {
			t.Errorf("step %d: changed = %v, want %v", i, changed, s.changed)
		}
		fi, _ := os.Stat(path)
		if got, _ := os.ReadFile(path); string(got) != s.data || fi.Mode() != s.mode {
			t.Errorf("step %d: %q %v, want %q %v", i, got, fi.Mode(), s.data, s.mode)
		}
	}
	if os.Geteuid() == 0 {
		if changed, err := WriteIfChanged(path, []byte("b"), 0o600, Owner(65534, 65534)); err != nil || !changed {
			t.Errorf("a new owner: changed = %v, %v; want a write", changed, err)
		}
		if changed, _ := WriteIfChanged(path, []byte("b"), 0o600, Owner(65534, 65534)); changed {
			t.Error("the same owner again: rewritten")
		}
	}
}

// assertOnly fails unless dir holds exactly names (no temp file left).
func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if strings.Join(got, " ") != strings.Join(names, " ") {
		t.Errorf("%s holds %v, want %v", dir, got, names)
	}
}

// Create writes a file whole once and never replaces it: a second Create
// fails with fs.ErrExist and leaves the first content, and no temp file
// stays behind either way.
func TestCreate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "admin.token")
	if err := Create(path, []byte("first\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Create(path, []byte("second\n"), 0o600)
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second Create: %v, want fs.ErrExist", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "first\n" {
		t.Errorf("content %q after a refused Create", b)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode().Perm())
	}
	// A dangling link is not followed: its target is not created.
	link := filepath.Join(dir, "link")
	if err := os.Symlink(filepath.Join(dir, "target"), link); err != nil {
		t.Fatal(err)
	}
	if err := Create(link, []byte("x"), 0o600); !errors.Is(err, fs.ErrExist) {
		t.Errorf("Create over a link: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "target")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the link's target was created")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("directory holds %d entries, want the file and the link", len(entries))
	}
}

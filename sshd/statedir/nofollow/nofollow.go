// Package nofollow is how the root daemon touches the parts of a slave's
// state dir that the tunnel user can write to, or could in versions before
// this layout: sshd's directory (its host key, pid file and log) and the
// hook's socket directory. It never follows a link there: every file is
// opened with O_NOFOLLOW, checked on its descriptor (a regular file with
// one link, owned by root or the tunnel user) and only then read, chowned
// or chmodded through that descriptor. A directory is chowned to root
// before anything in it is touched, so that nothing can be swapped under
// the daemon once it looks.
//
// The layout it keeps (sshd runs as the tunnel user and must read its host
// key and write its pid file and log, but neither replace them nor plant
// anything beside them):
//
//	STATE/sshd                        root:TUNNEL 0750
//	STATE/sshd/ssh_host_ed25519_key   root:TUNNEL 0640  (sshd accepts a key it does not own)
//	STATE/sshd/ssh_host_ed25519_key.pub root:root 0644
//	STATE/sshd/sshd.pid, sshd.log     root:TUNNEL 0620  (sshd writes, never creates)
//	STATE/run                         root:TUNNEL 0750  (the hook's socket)
//
// Content the tunnel user can write (the pid file, the log) is never
// trusted: a pid is checked against the process before anything is done to
// it, and the log is only ever parsed.
package nofollow

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/mas4h/mas4h/sshd/statedir"
)

// Modes of the layout.
const (
	DirMode      os.FileMode = 0o750 // STATE/sshd and STATE/run: root:tunnel group
	KeyMode      os.FileMode = 0o640 // the private host key: root:tunnel group
	PubMode      os.FileMode = 0o644 // the public host key: root:root
	WritableMode os.FileMode = 0o620 // the pid file and the log: root:tunnel group, written by sshd
)

// UnsafeError is a path the daemon refuses to use, and what to do about it.
type UnsafeError struct {
	Path, Why, Fix string
}

func (e *UnsafeError) Error() string {
	s := fmt.Sprintf("%s %s; mas4h never follows a link or trusts such a file in a directory the tunnel user can (or once could) write to, and left it as it is", e.Path, e.Why)
	if e.Fix != "" {
		s += ". " + e.Fix
	}
	return s
}

// maxPidFile bounds what ReadPid reads: the tunnel user writes the file.
const maxPidFile = 64

// Open opens path for reading without following a link: it must be a
// regular file with a single link (a FIFO, a device, a directory, a hard
// link to a file elsewhere are refused; O_NONBLOCK keeps a FIFO from
// blocking the open). Only the last component is not followed: use it for
// files in directories no one but root can change (STATE/sshd).
func Open(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, openError(path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	if err := checkRegular(f, path); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// ReadPid reads a pid file with Open. The number says nothing about the
// process: the tunnel user can write any number there, so check the
// process (its executable, owner and start time) before acting on it.
func ReadPid(path string) (int, error) {
	f, err := Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPidFile))
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", path, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("%s does not hold a pid", path)
	}
	return pid, nil
}

// Writable makes sure sshd, as the tunnel user, can write path (its pid
// file or its log) in its root-owned directory, where it cannot create a
// file: a missing one is created empty, owned by this process and the
// tunnel group gid, WritableMode (so that a pid file or log someone
// removed, say a log rotation, does not keep sshd from starting). With
// empty set, an existing file is emptied (a pid file, before sshd writes
// its own). Nothing is followed: a link, a FIFO, a hard link are refused.
func Writable(path string, gid int, empty bool) error {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o600)
	if err == nil {
		f := os.NewFile(uintptr(fd), path)
		defer f.Close()
		if err := unix.Fchown(fd, os.Geteuid(), gid); err != nil {
			return fmt.Errorf("chown %s: %w", path, err)
		}
		if err := unix.Fchmod(fd, uint32(WritableMode)); err != nil {
			return fmt.Errorf("chmod %s: %w", path, err)
		}
		return nil
	}
	if !errors.Is(err, unix.EEXIST) {
		return openError(path, err)
	}
	fd, err = unix.Open(path, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return openError(path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if err := checkRegular(f, path); err != nil {
		return err
	}
	if empty {
		if err := f.Truncate(0); err != nil {
			return fmt.Errorf("emptying %s: %w", path, err)
		}
	}
	return nil
}

// Size is the size of a regular file, without following a link (a link, a
// FIFO or a missing file is an error).
func Size(path string) (int64, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return 0, err
	}
	if !fi.Mode().IsRegular() {
		return 0, &UnsafeError{Path: path, Why: "is not a regular file (" + kind(fi.Mode()) + ")"}
	}
	return fi.Size(), nil
}

func openError(path string, err error) error {
	if errors.Is(err, unix.ELOOP) {
		return linkError(path)
	}
	if errors.Is(err, unix.ENXIO) { // a FIFO with no reader, a socket
		return &UnsafeError{Path: path, Why: "is not a regular file"}
	}
	return &os.PathError{Op: "open", Path: path, Err: err}
}

func linkError(path string) error {
	why := "is a symbolic link"
	if to, err := os.Readlink(path); err == nil { // the link itself, not followed
		why += " (to " + strconv.Quote(to) + ")"
	}
	return &UnsafeError{Path: path, Why: why,
		Fix: "Someone who could write to its directory put it there (in older versions of mas4h the tunnel user could, so a compromised sshd session may have): see where it points, check that file, then remove the link and start the slave again"}
}

// checkRegular checks an open file: a regular file with a single link.
func checkRegular(f *os.File, path string) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("checking %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return &UnsafeError{Path: path, Why: "is not a regular file (" + kind(modeType(st.Mode)) + ")"}
	}
	if st.Nlink != 1 {
		return &UnsafeError{Path: path, Why: fmt.Sprintf("has %d hard links (another name for it may be somewhere else)", st.Nlink),
			Fix: "Remove it and start the slave again"}
	}
	return nil
}

func modeType(m uint32) os.FileMode {
	switch m & unix.S_IFMT {
	case unix.S_IFDIR:
		return os.ModeDir
	case unix.S_IFLNK:
		return os.ModeSymlink
	case unix.S_IFIFO:
		return os.ModeNamedPipe
	case unix.S_IFSOCK:
		return os.ModeSocket
	case unix.S_IFCHR:
		return os.ModeDevice | os.ModeCharDevice
	case unix.S_IFBLK:
		return os.ModeDevice
	}
	return 0
}

func kind(m os.FileMode) string {
	switch {
	case m&os.ModeSymlink != 0:
		return "a symbolic link"
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeDevice != 0:
		return "a device"
	}
	return "not a regular file"
}

// entry is one file the layout keeps in a shared directory.
type entry struct {
	name   string
	mode   os.FileMode
	group  bool // group-owned by the tunnel group (else root's)
	create bool // created empty when missing (sshd cannot create it)
	fix    string
}

func sshdEntries(d statedir.Dir) []entry {
	key := filepath.Base(d.HostKey())
	return []entry{
		{name: key, mode: KeyMode, group: true,
			fix: "Removing the host key makes the slave create a new one at its next start; devices then need to learn it (mas4h slave accept-key)"},
		{name: key + ".pub", mode: PubMode},
		{name: filepath.Base(d.PidFile()), mode: WritableMode, group: true, create: true},
		{name: filepath.Base(d.Log()), mode: WritableMode, group: true, create: true},
	}
}

// Result says what PrepareSSHD found.
type Result struct {
	// Migrated is set when the directory was in the older layout (owned by
	// the tunnel user) and is now root's.
	Migrated bool
	// Unexpected lists names in the directory that the layout does not
	// know (left alone: the daemon never opens them).
	Unexpected []string
}

// PrepareSSHD brings d's sshd directory to the layout, creating it, or
// migrating the older layout (the directory and files owned by the tunnel
// user, tunnelUID) without following any link: the directory is opened
// without following a link and made root's first, then each file is
// opened the same way, checked, and given its owner and mode through its
// descriptor. A link, a non-regular file, a hard-linked file, or anything
// owned by an account other than root and the tunnel user is refused with
// an *UnsafeError. The state dir itself must be root's already (its whole
// path checked). An sshd running from the directory keeps running: its
// open log stays the same file, and it can still write its pid file and
// read its key.
func PrepareSSHD(d statedir.Dir, tunnelUID, tunnelGID int) (Result, error) {
	var res Result
	dir, former, err := openSharedDir(string(d), filepath.Base(d.SSHD()), tunnelUID, tunnelGID)
	if err != nil {
		return res, err
	}
	defer dir.Close()
	res.Migrated = former
	known := map[string]bool{}
	for _, e := range sshdEntries(d) {
		known[e.name] = true
		if err := prepareFile(dir, e, tunnelUID, tunnelGID); err != nil {
			return res, err
		}
	}
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return res, fmt.Errorf("listing %s: %w", dir.Name(), err)
	}
	for _, n := range names {
		if !known[n] && !strings.HasPrefix(n, ".") { // atomicfile's temp files start with a dot
			res.Unexpected = append(res.Unexpected, n)
		}
	}
	return res, nil
}

// PrepareRun makes d's run directory (the hook's socket) root:tunnel group
// 0750, refusing a link where it should be.
func PrepareRun(d statedir.Dir, tunnelGID int) error {
	dir, _, err := openSharedDir(string(d), filepath.Base(d.Run()), -1, tunnelGID)
	if err != nil {
		return err
	}
	return dir.Close()
}

// openSharedDir opens (creating it if missing) the directory name in the
// root-owned parent without following a link, and makes it root:gid
// DirMode. It was owned by formerUID (the tunnel user, in the older layout)
// when former is set; any owner other than root and formerUID is refused.
func openSharedDir(parent, name string, formerUID, gid int) (dir *os.File, former bool, err error) {
	pfd, err := unix.Open(parent, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false, fmt.Errorf("opening state dir %s: %w", parent, err)
	}
	defer unix.Close(pfd)
	path := filepath.Join(parent, name)
	if err := unix.Mkdirat(pfd, name, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, false, fmt.Errorf("creating %s: %w", path, err)
	}
	fd, err := unix.Openat(pfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, false, linkError(path)
	}
	if errors.Is(err, unix.ENOTDIR) {
		return nil, false, &UnsafeError{Path: path, Why: "is not a directory", Fix: "Remove it and start the slave again"}
	}
	if err != nil {
		return nil, false, fmt.Errorf("opening %s: %w", path, err)
	}
	dir = os.NewFile(uintptr(fd), path)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		dir.Close()
		return nil, false, fmt.Errorf("checking %s: %w", path, err)
	}
	former = formerUID > 0 && int(st.Uid) == formerUID
	if st.Uid != 0 && !former {
		dir.Close()
		return nil, false, &UnsafeError{Path: path, Why: fmt.Sprintf("is owned by uid %d, neither root nor the tunnel user", st.Uid),
			Fix: "If it is this slave's (a previous --tunnel-user?), chown root " + path + " and start again"}
	}
	// Root's first: from here on no one else can add, remove or rename
	// anything in it, so what is checked next stays what is used.
	if err := unix.Fchown(fd, 0, gid); err != nil {
		dir.Close()
		return nil, false, fmt.Errorf("chown %s: %w", path, err)
	}
	if err := unix.Fchmod(fd, uint32(DirMode)); err != nil {
		dir.Close()
		return nil, false, fmt.Errorf("chmod %s: %w", path, err)
	}
	return dir, former, nil
}

// prepareFile checks one file of the layout through a descriptor opened
// without following a link, and gives it its owner and mode.
func prepareFile(dir *os.File, e entry, formerUID, gid int) error {
	path := filepath.Join(dir.Name(), e.name)
	flags := unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC
	if e.create {
		flags |= unix.O_CREAT
	}
	fd, err := unix.Openat(int(dir.Fd()), e.name, flags, 0o600)
	if errors.Is(err, unix.ENOENT) && !e.create {
		return nil
	}
	if err != nil {
		err = openError(path, err)
		var u *UnsafeError
		if errors.As(err, &u) && e.fix != "" {
			u.Fix += ". " + e.fix
		}
		return err
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if err := checkRegular(f, path); err != nil {
		var u *UnsafeError
		if errors.As(err, &u) && e.fix != "" {
			u.Fix += ". " + e.fix
		}
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("checking %s: %w", path, err)
	}
	if st.Uid != 0 && int(st.Uid) != formerUID {
		return &UnsafeError{Path: path, Why: fmt.Sprintf("is owned by uid %d, neither root nor the tunnel user", st.Uid), Fix: e.fix}
	}
	g := 0
	if e.group {
		g = gid
	}
	if err := unix.Fchown(fd, 0, g); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	if err := unix.Fchmod(fd, uint32(e.mode)); err != nil {
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	return nil
}

// Problem is one way a state dir's shared parts differ from the layout,
// as Inspect reports it without changing anything.
type Problem struct {
	Path string
	Why  string
	// Unsafe: the slave refuses to start (a link, a hard link, a file
	// owned by another account); else the slave fixes it at its next start
	// (the older layout).
	Unsafe bool
}

// Inspect compares d's sshd directory with the layout without changing or
// following anything (for doctor). tunnelUID is the tunnel user's uid (-1
// if unknown).
func Inspect(d statedir.Dir, tunnelUID int) []Problem {
	var out []Problem
	owner := func(path string, uid uint32) {
		switch {
		case uid == 0:
		case int(uid) == tunnelUID:
			out = append(out, Problem{Path: path, Why: "is owned by the tunnel user (the older layout: the slave makes it root's at its next start)"})
		default:
			out = append(out, Problem{Path: path, Why: fmt.Sprintf("is owned by uid %d, neither root nor the tunnel user", uid), Unsafe: true})
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(d.SSHD(), &st); err != nil {
		return nil // not created yet
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return append(out, Problem{Path: d.SSHD(), Why: "is " + kind(modeType(st.Mode)) + ", not a directory", Unsafe: true})
	}
	owner(d.SSHD(), st.Uid)
	for _, e := range sshdEntries(d) {
		path := filepath.Join(d.SSHD(), e.name)
		if err := unix.Lstat(path, &st); err != nil {
			continue
		}
		switch {
		case st.Mode&unix.S_IFMT != unix.S_IFREG:
			out = append(out, Problem{Path: path, Why: "is " + kind(modeType(st.Mode)) + ", not a regular file", Unsafe: true})
		case st.Nlink != 1:
			out = append(out, Problem{Path: path, Why: fmt.Sprintf("has %d hard links", st.Nlink), Unsafe: true})
		default:
			owner(path, st.Uid)
		}
	}
	return out
}

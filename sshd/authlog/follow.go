package authlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/mas4h/mas4h/sshd/statedir/nofollow"
	"golang.org/x/sys/unix"
)

// Defaults of a Follower.
const (
	// DefaultPoll is how often the log is looked at for new lines: a
	// reconnecting device's older session is judged this soon after the
	// new one authenticated.
	DefaultPoll = 100 * time.Millisecond
	// DefaultBacklog is how much of the log's end is read at start, to
	// learn the keys of the sessions that were up before the daemon.
	DefaultBacklog = 64 << 20
	maxLine        = 4096 // sshd's own lines are shorter; longer ones are skipped
)

// Follower reads a log as it grows, line by line, across truncation and
// replacement (a rotated log is read again from its start). It never
// follows a symbolic link and reads only a regular file: the log sits in a
// directory its writer may control.
type Follower struct {
	Path    string
	Poll    time.Duration // 0: DefaultPoll
	Backlog int64         // 0: DefaultBacklog
	Log     *slog.Logger

	f      *os.File
	ino    uint64
	dev    uint64
	offset int64
	tail   []byte // a line not yet complete
	skip   bool   // inside an overlong line: drop it up to its newline
	warned bool
}

// Run calls each for every complete line until ctx ends: first the lines of
// the last Backlog bytes already there (live=false: they happened before),
// then every line as it is written (live=true).
func (f *Follower) Run(ctx context.Context, each func(line []byte, live bool)) {
	poll := f.Poll
	if poll <= 0 {
		poll = DefaultPoll
	}
	defer f.close()
	first := true
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		if err := f.read(first, each); err != nil {
			if !f.warned {
				f.Log.Warn("reading sshd's log; sessions are known by their ports alone meanwhile", "path", f.Path, "err", err)
				f.warned = true
			}
		} else if f.warned {
			f.Log.Info("reading sshd's log again", "path", f.Path)
			f.warned = false
		}
		first = false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// read opens the log when needed (again when it was replaced or cut short)
// and hands out the lines written since the last read.
func (f *Follower) read(first bool, each func([]byte, bool)) error {
	var st unix.Stat_t
	if err := unix.Lstat(f.Path, &st); err != nil {
		f.close()
		return fmt.Errorf("%s: %w", f.Path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		f.close()
		return fmt.Errorf("%s is not a regular file (a link?): not read", f.Path)
	}
	if f.f != nil && (st.Ino != f.ino || st.Dev != f.dev) {
		f.close() // replaced: read the new one from its start
	}
	live := !first
	if f.f == nil {
		file, err := nofollow.Open(f.Path) // a regular file with one link, not through a link
		if err != nil {
			return err
		}
		var fst unix.Stat_t
		if err := unix.Fstat(int(file.Fd()), &fst); err != nil {
			file.Close()
			return fmt.Errorf("%s: %w", f.Path, err)
		}
		f.f, f.ino, f.dev, f.offset, f.tail, f.skip = file, fst.Ino, fst.Dev, 0, nil, false
		if first {
			backlog := f.Backlog
			if backlog <= 0 {
				backlog = DefaultBacklog
			}
			if fst.Size > backlog {
				f.offset = fst.Size - backlog
				f.skip = true // the first line there is most likely cut
			}
		}
	} else if st.Size < f.offset {
		f.offset, f.tail, f.skip = 0, nil, false // truncated in place
	}
	return f.drain(each, live)
}

// drain reads from the offset to the end of the file.
func (f *Follower) drain(each func([]byte, bool), live bool) error {
	buf := make([]byte, 64<<10)
	for {
		n, err := f.f.ReadAt(buf, f.offset)
		if n == 0 {
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("reading %s: %w", f.Path, err)
			}
			return nil
		}
		f.offset += int64(n)
		data := buf[:n]
		for len(data) > 0 {
			i := bytes.IndexByte(data, '\n')
			if i < 0 {
				if !f.skip && len(f.tail)+len(data) <= maxLine {
					f.tail = append(f.tail, data...)
				} else {
					f.tail, f.skip = nil, true // an overlong line: dropped whole
				}
				break
			}
			line := data[:i]
			if len(f.tail) > 0 {
				line = append(f.tail, line...)
				f.tail = nil
			}
			if !f.skip && len(line) <= maxLine {
				each(line, live)
			}
			f.skip = false
			data = data[i+1:]
		}
	}
}

func (f *Follower) close() {
	if f.f != nil {
		f.f.Close()
	}
	f.f = nil
}

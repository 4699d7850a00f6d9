package hookclient

import (
	"bytes"
	"errors"
	"time"

	"golang.org/x/sys/unix"
)

// Ask sends req to the daemon's socket and reads its reply, all before
// deadline. An error means the daemon did not answer (a refusal is a Reply
// with Allow false). It talks to the socket with plain system calls, whose
// timeouts (SO_SNDTIMEO, SO_RCVTIMEO) bound the connect, the write and each
// read: the net package's poller costs more to set up than one request.
func Ask(socket string, req Request, deadline time.Time) (Reply, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return Reply{}, &AskError{"socket", err}
	}
	defer unix.Close(fd)
	// A unix connect waits (up to SO_SNDTIMEO) only while the daemon's
	// backlog is full.
	if err := retry(fd, unix.SO_SNDTIMEO, deadline, func() error {
		return unix.Connect(fd, &unix.SockaddrUnix{Name: socket})
	}); err != nil && err != unix.EISCONN {
		return Reply{}, &AskError{"connecting to " + socket, err}
	}
	msg := AppendRequest(make([]byte, 0, 128+len(req.Key)), req)
	for len(msg) > 0 {
		var n int
		if err := retry(fd, unix.SO_SNDTIMEO, deadline, func() (err error) {
			n, err = unix.Write(fd, msg)
			return err
		}); err != nil {
			return Reply{}, &AskError{"sending the request", err}
		}
		msg = msg[n:]
	}
	// The daemon writes one line and closes.
	buf := make([]byte, 0, 1024)
	for {
		if len(buf) == cap(buf) {
			if len(buf) >= maxReply {
				return Reply{}, &AskError{"reading the reply", errors.New("longer than 1 MiB")}
			}
			buf = append(buf, make([]byte, len(buf))...)[:len(buf)]
		}
		var n int
		if err := retry(fd, unix.SO_RCVTIMEO, deadline, func() (err error) {
			n, err = unix.Read(fd, buf[len(buf):cap(buf)])
			return err
		}); err != nil {
			return Reply{}, &AskError{"reading the reply", err}
		}
		if n == 0 || bytes.IndexByte(buf[len(buf):len(buf)+n], '\n') >= 0 {
			buf = buf[:len(buf)+n]
			break
		}
		buf = buf[:len(buf)+n]
	}
	reply, err := ParseReply(buf)
	if err != nil {
		return Reply{}, &AskError{"reading the reply", err}
	}
	return reply, nil
}

// retry sets the socket's timeout opt to what is left until deadline and
// runs call, again while a signal interrupts it (a call on a socket with a
// timeout is not restarted).
func retry(fd, opt int, deadline time.Time, call func() error) error {
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return errTimeout
		}
		tv := unix.NsecToTimeval(max(left.Nanoseconds(), int64(time.Microsecond)))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv); err != nil {
			return err
		}
		if err := call(); err != unix.EINTR {
			if err == unix.EAGAIN {
				return errTimeout
			}
			return err
		}
	}
}

var errTimeout = errors.New("timed out")

// AskError is a daemon that did not answer: the step that failed and why.
type AskError struct {
	Op  string
	Err error
}

func (e *AskError) Error() string { return "asking the slave daemon: " + e.Op + ": " + e.Err.Error() }
func (e *AskError) Unwrap() error { return e.Err }

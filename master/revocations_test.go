package master

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/mas4h/mas4h/master/wire"
)

// A slave asking for revocations after its sequence number gets them at
// once when there are some, and otherwise waits until a revoke happens.
func TestRevocationFeed(t *testing.T) {
	e := newEnv(t, nil)
	e.enrol("pi-1")
	e.enrol("pi-2")
	start := e.beat("s1", heartbeatOf(10)).Seq // where a fresh slave starts

	// Nothing after start: the ask waits, and a revoke wakes it.
	got := make(chan wire.RevocationsReply, 1)
	go func() {
		var r wire.RevocationsReply
		e.want(http.MethodGet, "/slaves/s1/revocations?after="+itoa(start)+"&wait=20", slaveTok, nil, http.StatusOK, &r)
		got <- r
	}()
	time.Sleep(200 * time.Millisecond) // the ask is waiting on the master (not a wait for a condition: nothing to poll)
	revokedAt := time.Now()
	e.want(http.MethodPost, "/devices/pi-1/revoke", adminTok, nil, http.StatusOK, nil)
	var r wire.RevocationsReply
	select {
	case r = <-got:
	case <-time.After(15 * time.Second):
		t.Fatal("the waiting ask did not return after a revoke")
	}
	t.Logf("the waiting slave had the revocation %s after the revoke", time.Since(revokedAt).Round(time.Millisecond))
	if len(r.Revocations) != 1 || r.Revocations[0].Device != "pi-1" || r.Seq != r.Revocations[0].Seq || r.Seq <= start {
		t.Fatalf("reply %+v", r)
	}

	// Already there: at once. After the last one: an empty answer at the
	// end of the wait.
	e.want(http.MethodDelete, "/devices/pi-2", adminTok, nil, http.StatusOK, nil)
	var r2 wire.RevocationsReply
	e.want(http.MethodGet, "/slaves/s1/revocations?after="+itoa(r.Seq)+"&wait=20", slaveTok, nil, http.StatusOK, &r2)
	if len(r2.Revocations) != 1 || r2.Revocations[0].Device != "pi-2" || r2.Revocations[0].Reason != "removed" {
		t.Fatalf("reply %+v", r2)
	}
	began := time.Now()
	var r3 wire.RevocationsReply
	e.want(http.MethodGet, "/slaves/s1/revocations?after="+itoa(r2.Seq)+"&wait=1", slaveTok, nil, http.StatusOK, &r3)
	if len(r3.Revocations) != 0 || r3.Seq != r2.Seq || time.Since(began) < 900*time.Millisecond {
		t.Fatalf("reply %+v after %s", r3, time.Since(began))
	}
}

func TestRevocationFeedRefuses(t *testing.T) {
	e := newEnv(t, nil)
	for _, c := range []struct {
		path, token string
		status      int
	}{
		{"/slaves/s1/revocations?after=0", "", http.StatusUnauthorized},
		{"/slaves/s1/revocations?after=0", adminTok, http.StatusForbidden},
		{"/slaves/s1/revocations?after=-1", slaveTok, http.StatusBadRequest},
		{"/slaves/s1/revocations", slaveTok, http.StatusBadRequest},
		{"/slaves/s1/revocations?after=0&wait=31", slaveTok, http.StatusBadRequest},
		{"/slaves/s1/revocations?after=0&wait=x", slaveTok, http.StatusBadRequest},
		{"/slaves/-bad/revocations?after=0", slaveTok, http.StatusBadRequest},
	} {
		e.want(http.MethodGet, c.path, c.token, nil, c.status, nil)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

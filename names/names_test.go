package names

import (
	"errors"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

// The hand-written checks agree with the regular expressions they stand
// for (the lean hook cannot afford package regexp).
func TestAgreesWithRegexps(t *testing.T) {
	deviceRE := regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	userRE := regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	cases := []string{"", "a", "_", "-a", ".a", "0a", "mas4h-tunnel", "a_b-c9", "A", "a.b", "a\n", "a$", "a b", "pi-kitchen",
		"a/b", "..", "é", strings.Repeat("a", 32), strings.Repeat("a", 33), strings.Repeat("a", 63), strings.Repeat("a", 64)}
	for _, c := range cases {
		if got, want := Device(c) == nil, deviceRE.MatchString(c); got != want {
			t.Errorf("Device(%q) ok=%v, regexp %v", c, got, want)
		}
		if got, want := Slave(c) == nil, deviceRE.MatchString(c); got != want {
			t.Errorf("Slave(%q) ok=%v, regexp %v", c, got, want)
		}
		if got, want := User(c) == nil, userRE.MatchString(c); got != want {
			t.Errorf("User(%q) ok=%v, regexp %v", c, got, want)
		}
		if ValidUser(c) != (User(c) == nil) {
			t.Errorf("ValidUser(%q) disagrees with User", c)
		}
	}
}

func TestErrors(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{Device("A/../x"), `device name must be 1-63 characters of a-z 0-9 . _ - starting with a letter or digit, got "A/../x"`},
		{Slave("-s1"), `slave name must be`},
		{User("root;id"), `user name must be 1-32 characters`},
		{Device(strings.Repeat("x", 100)), `"` + strings.Repeat("x", 64) + `"…`},
	} {
		if c.err == nil || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("error %v lacks %q", c.err, c.want)
		}
		if !errors.Is(c.err, ErrInvalid) {
			t.Errorf("%v is not ErrInvalid", c.err)
		}
	}
}

// FuzzNames: each check agrees with its regular expression on any input,
// and a refusal is an ErrInvalid whose message quotes the name on one line
// and at a bounded length, whatever the name holds.
func FuzzNames(f *testing.F) {
	deviceRE := regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	userRE := regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	for _, s := range []string{"pi-kitchen", "nas", "edge-01.site_b", "mas4h-tunnel", "_mas4h", "s1", "gw1", "",
		"A/../x", "-s1", "root;id", "a\nb", "é", "x\x00y", strings.Repeat("a", 63), strings.Repeat("é", 40)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, c := range []struct {
			kind string
			err  error
			re   *regexp.Regexp
		}{{"device", Device(s), deviceRE}, {"slave", Slave(s), deviceRE}, {"user", User(s), userRE}} {
			if (c.err == nil) != c.re.MatchString(s) {
				t.Fatalf("%s %q: %v, the expression says %v", c.kind, s, c.err, c.re.MatchString(s))
			}
			if c.err == nil {
				continue
			}
			msg := c.err.Error()
			if !errors.Is(c.err, ErrInvalid) || len(msg) > 400 || strings.ContainsAny(msg, "\n\r\x00") || !utf8.ValidString(msg) {
				t.Fatalf("%s %q: error %q", c.kind, s, msg)
			}
		}
		if ValidUser(s) != (User(s) == nil) {
			t.Fatalf("ValidUser(%q) disagrees with User", s)
		}
	})
}

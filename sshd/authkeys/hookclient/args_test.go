package hookclient

import (
	"regexp"
	"strings"
	"testing"

	"github.com/mas4h/mas4h/names"
)

const (
	testFP  = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"
	testKey = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
)

func TestCheckArgs(t *testing.T) {
	good := []string{"mas4h-tunnel", testFP, "ssh-ed25519", testKey}
	if _, err := CheckArgs(good); err != nil {
		t.Fatalf("valid arguments refused: %v", err)
	}
	for _, ok := range [][]string{
		{"_x", testFP, "sk-ssh-ed25519@openssh.com", testKey},
		{"a", testFP, "ecdsa-sha2-nistp256", "AAAA"},
		{"a", testFP, "ssh-rsa", "AAAAAA=="},
		{"a", testFP, "ssh-rsa", "AAAAAAA="},
	} {
		if _, err := CheckArgs(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	bad := map[string][]string{
		"too few":            good[:3],
		"too many":           append(append([]string{}, good...), "x"),
		"shell in user":      {"a;rm -rf /", good[1], good[2], good[3]},
		"dollar user":        {"$(id)", good[1], good[2], good[3]},
		"empty user":         {"", good[1], good[2], good[3]},
		"upper-case user":    {"Root", good[1], good[2], good[3]},
		"long user":          {strings.Repeat("a", 33), good[1], good[2], good[3]},
		"user with newline":  {"a\n", good[1], good[2], good[3]},
		"md5 fingerprint":    {good[0], "MD5:d7:a6:2e:49:6f:0b:e5:05:2b:65:2b:1c:70:ad:b9:11", good[2], good[3]},
		"short fingerprint":  {good[0], "SHA256:AAAA", good[2], good[3]},
		"quote in fp":        {good[0], testFP[:49] + `"`, good[2], good[3]},
		"newline in type":    {good[0], good[1], "ssh-ed25519\nx", good[3]},
		"empty type":         {good[0], good[1], "", good[3]},
		"upper-case type":    {good[0], good[1], "SSH-ED25519", good[3]},
		"not base64":         {good[0], good[1], good[2], "!!!!"},
		"unpadded":           {good[0], good[1], good[2], testKey[:len(testKey)-1]},
		"padding inside":     {good[0], good[1], good[2], "AA==AAAA"},
		"three pads":         {good[0], good[1], good[2], "A==="},
		"newline in key":     {good[0], good[1], good[2], testKey[:20] + "\n" + testKey[21:]},
		"quote in key":       {good[0], good[1], good[2], `AAA"`},
		"empty key":          {good[0], good[1], good[2], ""},
		"huge key":           {good[0], good[1], good[2], strings.Repeat("A", 1<<20)},
		"just over the size": {good[0], good[1], good[2], strings.Repeat("A", MaxArg+4)},
	}
	for name, args := range bad {
		t.Run(name, func(t *testing.T) {
			if _, err := CheckArgs(args); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// ValidUser is sshd/authkeys.UserRE (which sshd/user.go uses) without the
// regexp package; so is validKeyType the old hook's key type expression.
func TestCharsetsMatchTheOldExpressions(t *testing.T) {
	userRE := regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	typeRE := regexp.MustCompile(`^[a-z0-9][a-z0-9@.-]{0,63}$`)
	alphabet := "az09_-@.A/+=\n $"
	var inputs []string
	for _, a := range alphabet {
		inputs = append(inputs, string(a))
		for _, b := range alphabet {
			inputs = append(inputs, string(a)+string(b), "x"+string(a)+string(b), string(a)+"x"+string(b))
		}
	}
	inputs = append(inputs, "", strings.Repeat("a", 32), strings.Repeat("a", 33), strings.Repeat("a", 64), strings.Repeat("a", 65), "ssh-ed25519", "sk-ecdsa-sha2-nistp256@openssh.com", "mas4h-tunnel")
	for _, s := range inputs {
		if names.ValidUser(s) != userRE.MatchString(s) {
			t.Errorf("names.ValidUser(%q) = %v, the expression says %v", s, names.ValidUser(s), !names.ValidUser(s))
		}
		if validKeyType(s) != typeRE.MatchString(s) {
			t.Errorf("validKeyType(%q) = %v, the expression says %v", s, validKeyType(s), !validKeyType(s))
		}
	}
}

func FuzzValidUser(f *testing.F) {
	userRE := regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	typeRE := regexp.MustCompile(`^[a-z0-9][a-z0-9@.-]{0,63}$`)
	for _, s := range []string{"mas4h-tunnel", "_", "ssh-ed25519", "a\n", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if names.ValidUser(s) != userRE.MatchString(s) || validKeyType(s) != typeRE.MatchString(s) {
			t.Fatalf("%q: user %v, type %v", s, names.ValidUser(s), validKeyType(s))
		}
	})
}

func TestParseCommandLine(t *testing.T) {
	args := []string{"u", "f", "t", "k"}
	for _, c := range []struct {
		in   []string
		want CommandLine
	}{
		{append([]string{"--state-dir", "/s", "--"}, args...), CommandLine{StateDir: "/s", Budget: TotalBudget, Args: args}},
		{append([]string{"--state-dir=/s"}, args...), CommandLine{StateDir: "/s", Budget: TotalBudget, Args: args}},
		{append([]string{"--cache-only", "--budget-ms", "250", "--state-dir", "/s", "--"}, args...),
			CommandLine{StateDir: "/s", CacheOnly: true, Budget: 250e6, Args: args}},
		{[]string{"--budget-ms", "99999", "--state-dir", "/s", "--"}, CommandLine{StateDir: "/s", Budget: TotalBudget}},
		// After "--" nothing is a flag.
		{[]string{"--state-dir", "/s", "--", "--cache-only", "--state-dir", "/x", "k"},
			CommandLine{StateDir: "/s", Budget: TotalBudget, Args: []string{"--cache-only", "--state-dir", "/x", "k"}}},
	} {
		got, err := ParseCommandLine(c.in)
		if err != nil || got.StateDir != c.want.StateDir || got.CacheOnly != c.want.CacheOnly || got.Budget != c.want.Budget || strings.Join(got.Args, " ") != strings.Join(c.want.Args, " ") {
			t.Errorf("%q: got %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	for _, bad := range [][]string{
		args,
		append([]string{"--state-dir", "rel", "--"}, args...),
		append([]string{"--state-dir="}, args...),
		{"--state-dir"},
		append([]string{"--budget-ms", "0", "--state-dir", "/s", "--"}, args...),
		append([]string{"--budget-ms", "x", "--state-dir", "/s", "--"}, args...),
		append([]string{"--budget-ms", "-5", "--state-dir", "/s", "--"}, args...),
	} {
		if cl, err := ParseCommandLine(bad); err == nil {
			t.Errorf("%q accepted: %+v", bad, cl)
		}
	}
}

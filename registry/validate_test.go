package registry

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateDeviceName(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"pi-01", true},
		{"a", true},
		{"0", true},
		{"router.home_2", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{"A", false},
		{"Pi", false},
		{"-x", false},
		{".x", false},
		{"_x", false},
		{"../x", false},
		{"a/b", false},
		{"a;rm -rf /", false},
		{"x\n", false},
		{"a b", false},
		{"a\x00", false},
		{"café", false},
		{"ｐｉ", false},
		{"$(id)", false},
		{strings.Repeat("x;", 1000), false},
	}
	for _, tt := range tests {
		err := ValidateDeviceName(tt.in)
		if tt.ok != (err == nil) {
			t.Errorf("ValidateDeviceName(%q) = %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if err == nil {
			continue
		}
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidateDeviceName(%q) error does not wrap ErrInvalid", tt.in)
		}
		if !strings.Contains(err.Error(), "a-z 0-9") {
			t.Errorf("error %q does not state the rule", err)
		}
		if len(err.Error()) > 300 {
			t.Errorf("error for a %d-byte name is %d bytes long; input should be truncated", len(tt.in), len(err.Error()))
		}
		if strings.ContainsAny(err.Error(), "\n\x00") {
			t.Errorf("error %q carries raw control characters", err)
		}
	}
}

func TestParseForwardSpec(t *testing.T) {
	tests := []struct {
		in      string
		want    ForwardSpec
		wantErr string // substring; "" means success
	}{
		{"ssh=localhost:22", ForwardSpec{"ssh", "localhost:22", ""}, ""},
		{"web=192.168.1.10:8080,probe=http", ForwardSpec{"web", "192.168.1.10:8080", "http"}, ""},
		{"v6=[::1]:22", ForwardSpec{"v6", "[::1]:22", ""}, ""},
		{"v6=[2001:DB8::0001]:443,probe=none", ForwardSpec{"v6", "[2001:db8::1]:443", "none"}, ""},
		{"s=host.example.com:2222,probe=ssh-banner", ForwardSpec{"s", "host.example.com:2222", "ssh-banner"}, ""},
		{"b=h:1,probe=banner:^220 .*(FTP|SMTP){1,2}", ForwardSpec{"b", "h:1", "banner:^220 .*(FTP|SMTP){1,2}"}, ""},
		{"m=h:6379,probe=send-expect:PING|+PONG|^\\+PONG", ForwardSpec{"m", "h:6379", "send-expect:PING|+PONG|^\\+PONG"}, ""},
		{"a_1-b=h:65535", ForwardSpec{"a_1-b", "h:65535", ""}, ""},
		{strings.Repeat("n", 32) + "=h:1", ForwardSpec{strings.Repeat("n", 32), "h:1", ""}, ""},

		{"", ForwardSpec{}, "NAME=HOST:PORT"},
		{"ssh", ForwardSpec{}, "NAME=HOST:PORT"},
		{"=h:1", ForwardSpec{}, "forward name"},
		{"SSH=h:1", ForwardSpec{}, "forward name"},
		{strings.Repeat("n", 33) + "=h:1", ForwardSpec{}, "forward name"},
		{"a;rm -rf /=h:1", ForwardSpec{}, "forward name"},
		{"ssh=localhost", ForwardSpec{}, `host:port`},
		{"ssh=localhost:0", ForwardSpec{}, "host:port"},
		{"ssh=localhost:65536", ForwardSpec{}, "host:port"},
		{"ssh=localhost:+22", ForwardSpec{}, "host:port"},
		{"ssh=localhost:22;rm -rf /", ForwardSpec{}, "host:port"},
		{"ssh=$(id):22", ForwardSpec{}, "host:port"},
		{"ssh=-oProxyCommand=x:22", ForwardSpec{}, "host:port"},
		{"ssh=::1:22", ForwardSpec{}, "host:port"},
		{"ssh=[::1%eth0]:22", ForwardSpec{}, "host:port"},
		{"ssh=[1.2.3.4]:22", ForwardSpec{}, "host:port"},
		{"ssh=999.1.1.1:22", ForwardSpec{}, "host:port"},
		{"ssh=a..b:22", ForwardSpec{}, "host:port"},
		{"ssh=" + strings.Repeat("a.", 130) + "a:22", ForwardSpec{}, "host:port"},
		{"ssh=héllo:22", ForwardSpec{}, "host:port"},
		{"ssh=localhost:22\n", ForwardSpec{}, "control character"},
		{"ssh=local\x00host:22", ForwardSpec{}, "control character"},
		{"ssh=localhost:22,probe=", ForwardSpec{}, "ssh-banner"},
		{"ssh=localhost:22,probe=ping", ForwardSpec{}, "ssh-banner, http, none"},
		{"ssh=localhost:22,timeout=3", ForwardSpec{}, "unknown option"},
		{"ssh=localhost:22,probe=banner:(", ForwardSpec{}, "bad regex"},
		{"ssh=localhost:22,probe=banner:", ForwardSpec{}, "needs a regex"},
		{"ssh=localhost:22,probe=send-expect:PING", ForwardSpec{}, "'|'"},
		{"ssh=localhost:22,probe=send-expect:|PONG", ForwardSpec{}, "non-empty text"},
		{"ssh=localhost:22,probe=send-expect:PING|", ForwardSpec{}, "needs a regex"},
		{"ssh=localhost:22,probe=send-expect:PING|[", ForwardSpec{}, "bad regex"},
		{`ssh=localhost:22,probe=send-expect:PING\q|^\+PONG`, ForwardSpec{}, "bad escape"}, // the slave could not run it
		{"ssh=localhost:22,probe=banner:" + strings.Repeat("x", 2000), ForwardSpec{}, "max"},
	}
	for _, tt := range tests {
		got, err := ParseForwardSpec(tt.in)
		if tt.wantErr == "" {
			if err != nil || got != tt.want {
				t.Errorf("ParseForwardSpec(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			continue
		}
		if err == nil {
			t.Errorf("ParseForwardSpec(%q) = %+v, want error", tt.in, got)
			continue
		}
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("ParseForwardSpec(%q) error %q, want ErrInvalid saying %q", tt.in, err, tt.wantErr)
		}
		if len(err.Error()) > 400 {
			t.Errorf("ParseForwardSpec(%q...) error is %d bytes; input should be truncated", tt.in[:20], len(err.Error()))
		}
	}
	if d := DefaultForward(); d != (ForwardSpec{Name: "ssh", Target: "localhost:22"}) {
		t.Errorf("DefaultForward() = %+v", d)
	}
}

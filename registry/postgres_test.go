package registry

import (
	"strings"
	"testing"
)

// A master warns when a man in the middle could sit between it and
// PostgreSQL: no TLS, or TLS without a checked certificate, beyond the
// loopback.
func TestPostgresUnverified(t *testing.T) {
	for _, tc := range []struct {
		url, want string
	}{
		{"postgres://m@db.example.net/fleet", "not checked"}, // libpq's default: prefer
		{"postgres://m@db.example.net/fleet?sslmode=disable", "without TLS"},
		{"postgres://m@db.example.net/fleet?sslmode=require", "not checked"},
		{"postgres://m@db.example.net/fleet?sslmode=verify-full", ""},
		{"postgres://m@127.0.0.1:5432/fleet?sslmode=disable", ""},
		{"postgres://m@localhost/fleet", ""},
		{"postgres://m@[::1]/fleet?sslmode=disable", ""},
		{"postgres:///fleet?host=/run/postgresql", ""},
		{"postgres://m@127.0.0.1,db2.example.net/fleet?sslmode=disable", "db2.example.net"},
	} {
		got := PostgresUnverified(tc.url)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("PostgresUnverified(%s) = %q, want %q", tc.url, got, tc.want)
		}
	}
}

package main

import (
	"strings"
	"testing"
)

// The flags of install make up the role's config line, or are refused
// with the reason: none is silently dropped.
func TestInstallConfArgs(t *testing.T) {
	for _, tc := range []struct {
		name, role string
		o          installOpts
		want, err  string
	}{
		{name: "master", role: "master", o: installOpts{listen: "0.0.0.0:8080"}, want: "--listen 0.0.0.0:8080"},
		{name: "agent", role: "agent", o: installOpts{master: "https://m:8080"}, want: "--master https://m:8080"},
		{name: "agent http", role: "agent", o: installOpts{master: "http://m:8080", insecureHTTP: true}, want: "--master http://m:8080 --insecure-http"},
		{name: "agent http refused", role: "agent", o: installOpts{master: "http://m:8080"}, err: "plain http"},
		{name: "insecure alone", role: "agent", o: installOpts{insecureHTTP: true}, err: "goes with --master"},
		{name: "insecure slave", role: "slave", o: installOpts{master: "http://m", insecureHTTP: true}, err: "a flag of role agent"},
		{name: "slave listen alone", role: "slave", o: installOpts{sshListen: "0.0.0.0:2200"}, err: "needs --master URL or --db PATH"},
		{name: "slave", role: "slave", o: installOpts{master: "http://m", tunnelUser: "mas4h-tunnel"}, want: "--master http://m --token-file /etc/mas4h/slave-s1.token --ssh-listen 0.0.0.0:2222"},
		{name: "agent masters", role: "agent", o: installOpts{master: "https://m1:8080,https://m2:8080"}, want: "--master https://m1:8080,https://m2:8080"},
		{name: "agent masters, one http", role: "agent", o: installOpts{master: "https://m1:8080,http://m2:8080"}, err: "--master http://m2:8080 is plain http"},
		{name: "slave masters", role: "slave", o: installOpts{master: "https://m1,https://m2", tunnelUser: "mas4h-tunnel"}, want: "--master https://m1,https://m2 --token-file /etc/mas4h/slave-s1.token --ssh-listen 0.0.0.0:2222"},
		{name: "slave masters, empty", role: "slave", o: installOpts{master: "https://m1,,https://m2"}, err: "master 2 of 3: empty"},
		{name: "slave masters, twice", role: "slave", o: installOpts{master: "https://m1,https://m1"}, err: "is master 1 already"},
		{name: "skeleton", role: "slave", o: installOpts{tunnelUser: "mas4h-tunnel"}, want: ""},
		{name: "args", role: "master", o: installOpts{args: "--listen :1 --public-url http://x"}, want: "--listen :1 --public-url http://x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.o.confArgs(tc.role, "s1")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("confArgs = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

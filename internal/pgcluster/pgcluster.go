// Package pgcluster starts a throwaway PostgreSQL cluster on loopback for
// mas4h's tests and benchmarks: initdb into a fresh directory, pg_ctl to
// start it on a free port of 127.0.0.1 with trust authentication, and a
// database per caller. As root, the cluster runs as the "postgres" system
// user (PostgreSQL refuses to run as root). Nothing here is for production.
package pgcluster

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
)

// ErrNotInstalled says initdb and pg_ctl were not found.
var ErrNotInstalled = errors.New("PostgreSQL's initdb and pg_ctl are not installed (Debian: apt-get install postgresql)")

// Cluster is one running PostgreSQL server.
type Cluster struct {
	Dir  string // the cluster's files: data/, the socket and the log
	Port int
	bin  string // directory of initdb, pg_ctl, postgres
	uid  int    // run as this user when root; -1 otherwise
	gid  int

	mu  sync.Mutex
	dbs int
}

// Bin finds the directory that holds initdb and pg_ctl: $PATH first, then
// Debian's /usr/lib/postgresql/VERSION/bin, newest version first.
func Bin() (string, error) {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		dir := filepath.Dir(p)
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "pg_ctl")); err == nil {
			return d, nil
		}
	}
	return "", ErrNotInstalled
}

func version(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// Start creates a cluster in a new directory under parent ("" for the
// system's temporary directory) and starts it. The caller must Stop it.
// fsync is off: a test cluster trades durability for speed unless durable
// is set (benchmarks that measure the database want it on).
func Start(ctx context.Context, parent string, durable bool) (*Cluster, error) {
	return StartOn(ctx, parent, durable, nil)
}

// StartOn is Start with the server listening on the address of each of
// listen too, besides 127.0.0.1, and trusting any client from its prefix
// (198.18.0.1/24: listen on 198.18.0.1, trust 198.18.0.0/24): tests
// whose masters run in network namespaces reach it on the host's side of
// their link. The addresses must exist when it starts.
func StartOn(ctx context.Context, parent string, durable bool, listen []netip.Prefix) (*Cluster, error) {
	bin, err := Bin()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(parent, "mas4h-pg-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, bin: bin, uid: -1, gid: -1}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("running PostgreSQL as root needs the postgres system user (Debian's postgresql package creates it): %w", err)
		}
		c.uid, _ = strconv.Atoi(u.Uid)
		c.gid, _ = strconv.Atoi(u.Gid)
		if err := c.giveDir(); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	if out, err := c.run(ctx, "initdb", "-D", c.data(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %v: %s", err, out)
	}
	addrs, hba := []string{"127.0.0.1"}, ""
	for _, p := range listen {
		addrs = append(addrs, p.Addr().String())
		hba += fmt.Sprintf("host all all %s trust\n", p.Masked())
	}
	conf := "listen_addresses = '" + strings.Join(addrs, ", ") + "'\nunix_socket_directories = '" + dir + "'\nmax_connections = 300\nshared_buffers = 128MB\n"
	if !durable {
		conf += "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
	}
	err = appendFile(filepath.Join(c.data(), "postgresql.conf"), conf)
	if err == nil && hba != "" {
		err = appendFile(filepath.Join(c.data(), "pg_hba.conf"), hba)
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		c.Port, err = freePort()
		if err == nil {
			err = c.Start(ctx)
		}
		if err == nil {
			return c, nil
		}
		if attempt == 4 {
			os.RemoveAll(dir)
			return nil, err
		}
	}
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(text)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// giveDir hands the cluster's directory to the user the server runs as
// (when root): the temporary parent may be 0700 root's, so the directory
// lets the server through and is its own.
func (c *Cluster) giveDir() error {
	if c.uid < 0 {
		return nil
	}
	if err := os.Chmod(c.Dir, 0o711); err != nil {
		return err
	}
	return os.Chown(c.Dir, c.uid, c.gid)
}

func (c *Cluster) data() string { return filepath.Join(c.Dir, "data") }

// Start starts the stopped server again on its port.
func (c *Cluster) Start(ctx context.Context) error {
	out, err := c.run(ctx, "pg_ctl", "-D", c.data(), "-l", filepath.Join(c.Dir, "server.log"), "-w", "-t", "60",
		"-o", "-p "+strconv.Itoa(c.Port), "start")
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(c.Dir, "server.log"))
		return fmt.Errorf("pg_ctl start: %v: %s\n%s", err, out, tail(log, 2000))
	}
	return nil
}

// Stop stops the server (fast mode: sessions are ended, the data is kept).
func (c *Cluster) Stop(ctx context.Context) error {
	out, err := c.run(ctx, "pg_ctl", "-D", c.data(), "-m", "fast", "-w", "-t", "60", "stop")
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %v: %s", err, out)
	}
	return nil
}

// Destroy stops the server if it runs and removes its files.
func (c *Cluster) Destroy() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := os.Stat(filepath.Join(c.data(), "postmaster.pid")); err == nil {
		c.run(ctx, "pg_ctl", "-D", c.data(), "-m", "immediate", "-w", "-t", "60", "stop")
	}
	os.RemoveAll(c.Dir)
}

// URL is the connection URL of database name on this cluster.
func (c *Cluster) URL(name string) string { return c.URLAt("127.0.0.1", name) }

// URLAt is the connection URL of database name through the address host,
// one of StartOn's.
func (c *Cluster) URLAt(host, name string) string {
	u := url.URL{Scheme: "postgres", User: url.User("postgres"), Host: net.JoinHostPort(host, strconv.Itoa(c.Port)), Path: "/" + name,
		RawQuery: "sslmode=disable"}
	return u.String()
}

// NewDatabase creates a fresh, empty database named after prefix and
// returns its URL.
func (c *Cluster) NewDatabase(ctx context.Context, prefix string) (string, error) {
	c.mu.Lock()
	c.dbs++
	name := fmt.Sprintf("%s_%d_%d", sanitize(prefix), os.Getpid(), c.dbs)
	c.mu.Unlock()
	db, err := sql.Open("pgx", c.URL("postgres"))
	if err != nil {
		return "", err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE DATABASE "`+name+`"`); err != nil {
		return "", fmt.Errorf("creating database %s: %w", name, err)
	}
	return c.URL(name), nil
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
		if b.Len() >= 40 {
			break
		}
	}
	if b.Len() == 0 {
		return "db"
	}
	return b.String()
}

func (c *Cluster) run(ctx context.Context, prog string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, prog), args...)
	cmd.Dir = c.Dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if c.uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(c.uid), Gid: uint32(c.gid)}}
		cmd.Env = append(cmd.Env, "HOME="+c.Dir)
	}
	return cmd.CombinedOutput()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// StartReplica makes a streaming replica of primary (pg_basebackup -R) in a
// new directory under parent and starts it on a port of its own. Promote
// turns it into a primary.
func StartReplica(ctx context.Context, primary *Cluster, parent string) (*Cluster, error) {
	dir, err := os.MkdirTemp(parent, "mas4h-pg-replica-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, bin: primary.bin, uid: primary.uid, gid: primary.gid}
	if err := c.giveDir(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if out, err := c.run(ctx, "pg_basebackup", "-D", c.data(), "-h", "127.0.0.1", "-p", strconv.Itoa(primary.Port),
		"-U", "postgres", "-R", "-X", "stream", "--no-sync", "--checkpoint=fast"); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pg_basebackup: %v: %s", err, out)
	}
	// The copied configuration names the primary's socket directory.
	f, err := os.OpenFile(filepath.Join(c.data(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteString("unix_socket_directories = '" + dir + "'\n")
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if c.Port, err = freePort(); err == nil {
		err = c.Start(ctx)
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return c, nil
}

// Promote turns a replica into a primary (pg_ctl promote) and waits until
// it takes writes.
func (c *Cluster) Promote(ctx context.Context) error {
	if out, err := c.run(ctx, "pg_ctl", "-D", c.data(), "-w", "-t", "60", "promote"); err != nil {
		return fmt.Errorf("pg_ctl promote: %v: %s", err, out)
	}
	return nil
}

// Kill stops the server at once, as a crash would (pg_ctl stop -m
// immediate): no checkpoint, sessions cut.
func (c *Cluster) Kill(ctx context.Context) error {
	if out, err := c.run(ctx, "pg_ctl", "-D", c.data(), "-m", "immediate", "-w", "-t", "60", "stop"); err != nil {
		return fmt.Errorf("pg_ctl stop -m immediate: %v: %s", err, out)
	}
	return nil
}

// Host is the cluster's address, 127.0.0.1:PORT.
func (c *Cluster) Host() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Port)) }

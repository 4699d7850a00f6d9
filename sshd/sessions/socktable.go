package sessions

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

type sockInfo struct {
	localPort int
	remote    string
	listen    bool
	tcp       TCPState // connections through sock_diag only
}

// readSockets reads /proc/net/tcp and tcp6 once into a map by inode: the
// listening sockets, and (sshPort > 0) the connections to sshPort, the only
// ones discovery asks about. Everything else (the probes' TIME_WAIT sockets
// above all) is skipped before it costs an allocation.
func readSockets(root string, sshPort int) (map[uint64]sockInfo, error) {
	socks := map[uint64]sockInfo{}
	var br *bufio.Reader
	for _, name := range []string{"tcp", "tcp6"} {
		f, err := os.Open(filepath.Join(root, "net", name))
		if err != nil {
			if os.IsNotExist(err) && name == "tcp6" {
				continue
			}
			return nil, fmt.Errorf("reading socket table: %w", err)
		}
		if br == nil {
			br = bufio.NewReaderSize(f, 64<<10)
		} else {
			br.Reset(f)
		}
		err = parseSockets(br, sshPort, socks)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("reading socket table %s: %w", name, err)
		}
	}
	return socks, nil
}

// parseSockets adds the wanted lines of one /proc/net/tcp{,6} table to socks.
func parseSockets(br *bufio.Reader, sshPort int, socks map[uint64]sockInfo) error {
	header := true
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			return errors.New("line too long")
		}
		if len(line) > 0 && !header {
			parseSocketLine(line, sshPort, socks)
		}
		header = false
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// parseSocketLine reads "sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...".
func parseSocketLine(line []byte, sshPort int, socks map[uint64]sockInfo) {
	var f [10][]byte
	n := 0
	for i := 0; i < len(line) && n < len(f); {
		for i < len(line) && (line[i] == ' ' || line[i] == '\t' || line[i] == '\n') {
			i++
		}
		j := i
		for j < len(line) && line[j] != ' ' && line[j] != '\t' && line[j] != '\n' {
			j++
		}
		if j > i {
			f[n] = line[i:j]
			n++
		}
		i = j
	}
	if n < 10 {
		return
	}
	listen := string(f[3]) == "0A"
	lport, ok := hexPort(f[1])
	if !ok || (!listen && (sshPort <= 0 || lport != sshPort)) {
		return
	}
	ino := uint64(0)
	for _, c := range f[9] {
		if c < '0' || c > '9' || ino > (math.MaxUint64-uint64(c-'0'))/10 {
			return // not a number, or past 64 bits: not an inode the kernel printed
		}
		ino = ino*10 + uint64(c-'0')
	}
	if ino == 0 {
		return
	}
	sk := sockInfo{localPort: lport, listen: listen}
	if !listen {
		rip, rport, ok := parseHexAddr(string(f[2]))
		if !ok {
			return
		}
		sk.remote = net.JoinHostPort(rip.String(), strconv.Itoa(rport))
	}
	socks[ino] = sk
}

// hexPort reads the port of an "ADDR:PORT" socket table address.
func hexPort(b []byte) (int, bool) {
	i := bytes.LastIndexByte(b, ':')
	if i < 0 || len(b)-i-1 < 1 || len(b)-i-1 > 4 {
		return 0, false
	}
	p := 0
	for _, c := range b[i+1:] {
		switch {
		case c >= '0' && c <= '9':
			p = p<<4 | int(c-'0')
		case c >= 'A' && c <= 'F':
			p = p<<4 | int(c-'A'+10)
		case c >= 'a' && c <= 'f':
			p = p<<4 | int(c-'a'+10)
		default:
			return 0, false
		}
	}
	return p, true
}

// parseHexAddr decodes "0100007F:4E21" (IPv4) or the 32-hex-digit IPv6 form.
// The kernel prints each 32-bit word in host (little-endian) order.
func parseHexAddr(s string) (net.IP, int, bool) {
	host, port, ok := strings.Cut(s, ":")
	if !ok {
		return nil, 0, false
	}
	p, err := strconv.ParseUint(port, 16, 16)
	if err != nil {
		return nil, 0, false
	}
	raw, err := hex.DecodeString(host)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return nil, 0, false
	}
	ip := make(net.IP, len(raw))
	for i := 0; i < len(raw); i += 4 {
		ip[i], ip[i+1], ip[i+2], ip[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	return ip, int(p), true
}

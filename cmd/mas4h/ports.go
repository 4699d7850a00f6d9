package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/mas4h/mas4h/registry"
)

// warnEphemeralOverlap says when a lease range overlaps the kernel's
// ephemeral ports: a local client socket on 127.0.0.1:P (any outgoing
// connection, or one in TIME_WAIT) makes sshd bind the device's forward on
// [::1]:P only while still reporting success, so the tunnel looks up but the
// port is missing on 127.0.0.1.
func warnEphemeralOverlap(w io.Writer, pr registry.PortRange) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || pr.Hi < lo || pr.Lo > hi {
		return
	}
	fmt.Fprintf(w, "warning: port range %s overlaps the kernel's ephemeral ports %d-%d; a forward can fail to bind "+
		"on 127.0.0.1 while an outgoing connection uses the same port. Use a range below %d, or reserve it: "+
		"sysctl -w net.ipv4.ip_local_reserved_ports=%s\n", pr, lo, hi, lo, pr)
}

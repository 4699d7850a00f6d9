package master

import (
	"context"
	"net/netip"

	"github.com/gin-gonic/gin"
)

// A request's source, as the dashboard's login backoff, the validator's
// rate limit and the tallies of refusals count it: the connection's
// address (no header is trusted to say otherwise), an IPv6 address by its
// /64, which one host or site usually holds whole: counting its 2^64
// addresses one by one would be no bound at all.

type sourceKey struct{}

// tagSource puts the request's source in its context, for code that sees
// only the context (admit, deny).
func (s *Server) tagSource(c *gin.Context) {
	c.Request = c.Request.WithContext(context.WithValue(c.Request.Context(), sourceKey{}, sourceAddr(remoteIP(c))))
}

// sourceOf is the source tagSource recorded; "" outside a request.
func sourceOf(ctx context.Context) string {
	v, _ := ctx.Value(sourceKey{}).(string)
	return v
}

// sourceAddr is the source of a connection from ip: an IPv4 address as
// is, an IPv6 address as its /64, anything else as given.
func sourceAddr(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.Unmap().WithZone("")
	if a.Is4() {
		return a.String()
	}
	return netip.PrefixFrom(a, 64).Masked().String()
}

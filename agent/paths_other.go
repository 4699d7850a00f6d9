//go:build !darwin

package agent

// DefaultStateDir is the agent's state dir unless told otherwise.
const DefaultStateDir = "/var/lib/mas4h-agent"

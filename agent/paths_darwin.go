package agent

// DefaultStateDir is the agent's state dir unless told otherwise. On macOS
// it is under /var/db, where the system's own daemons keep their state:
// root's, and never handed to a user the way Homebrew takes /usr/local/var
// on Intel Macs (a root daemon's key must not sit where a user can write).
const DefaultStateDir = "/var/db/mas4h-agent"

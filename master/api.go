package master

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/validator"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/metrics"
	"github.com/mas4h/mas4h/registry"
)

// Defaults of Config.
const (
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultCacheTTL          = 5 * time.Minute
	DefaultSlotRate          = 2.0 // slot requests per second per source address
	DefaultSlotBurst         = 10
	// MaxBody caps request bodies; a slot request is well under 4 KiB.
	MaxBody = 64 << 10
	// MaxHeartbeatBody caps heartbeats, which list every live tunnel of a
	// slave (some 200 bytes each), so they get more room than MaxBody.
	MaxHeartbeatBody = 32 << 20
)

// Store is the registry as the API needs it. *registry.Store implements it;
// another engine needs only these methods.
type Store interface {
	EnrolDevice(ctx context.Context, name string, key ssh.PublicKey, forwards []registry.ForwardSpec, labels map[string]string, pr registry.PortRange, note string) (dev registry.Device, created bool, err error)
	Device(ctx context.Context, name string) (registry.Device, error)
	DeviceByFingerprint(ctx context.Context, fp string) (registry.Device, error)
	Devices(ctx context.Context) ([]registry.Device, error)
	Revoke(ctx context.Context, name string) (registry.Device, error)
	Remove(ctx context.Context, name string) error
	DeviceCounts(ctx context.Context) (total, active, revoked int, err error)
	OnlineDevices(ctx context.Context) (int, error)

	SetDeviceLabels(ctx context.Context, name string, set map[string]string, remove []string) (registry.Device, error)
	DevicesMatching(ctx context.Context, sels []registry.Selector) ([]registry.Device, error)
	LastDeviceEvent(ctx context.Context, device string, kinds []string) (registry.Event, error)

	AddOperator(ctx context.Context, name string, key ssh.PublicKey, allow []string) (registry.Operator, error)
	Operators(ctx context.Context) ([]registry.Operator, error)
	Operator(ctx context.Context, name string) (registry.Operator, error)
	OperatorByFingerprint(ctx context.Context, fp string) (registry.Operator, error)
	OperatorDevices(ctx context.Context, o registry.Operator) ([]registry.Device, error)
	OperatorAccess(ctx context.Context, fingerprint string) (registry.Operator, []wire.OpenPort, error)
	AllowOperator(ctx context.Context, name, sel string) (registry.Operator, error)
	DenyOperator(ctx context.Context, name, sel string) (registry.Operator, error)
	RevokeOperator(ctx context.Context, name string) (registry.Operator, error)
	RemoveOperator(ctx context.Context, name string) error

	AddSlaveEvent(ctx context.Context, kind, slave, device, detail string) error
	AddOperatorEvent(ctx context.Context, kind, operator, slave, device, detail string) error
	Events(ctx context.Context, f registry.EventFilter) ([]registry.Event, error)
	LastEventID(ctx context.Context) (int64, error)

	SetSlaveCredential(ctx context.Context, name string, hash [sha256.Size]byte) (replaced bool, err error)
	SlaveCredentialHash(ctx context.Context, name string) ([sha256.Size]byte, error)
	SlaveEntries(ctx context.Context) ([]registry.SlaveEntry, error)
	AcceptSlaveKeys(ctx context.Context, name string, fingerprints []string) ([]string, error)
	RemoveSlave(ctx context.Context, name string) error
	AddSession(ctx context.Context, sess registry.Session) error
	Session(ctx context.Context, id string) (registry.Session, error)
	RemoveSession(ctx context.Context, id string) error

	RecordHeartbeat(ctx context.Context, r registry.SlaveReport, liveSince time.Time) (registry.SlaveChange, error)
	MarkSlaveDead(ctx context.Context, name string, lastSeen, at time.Time, detail string) (bool, error)
	Slaves(ctx context.Context) ([]registry.Slave, error)
	LiveTunnels(ctx context.Context) ([]registry.Tunnel, error)
	DeviceTunnels(ctx context.Context, device string) ([]registry.Tunnel, error)
	CountDevices(ctx context.Context) (registry.DeviceCounts, error)
	FindDevices(ctx context.Context, q registry.DeviceQuery) ([]registry.Device, int, error)
	TunnelsOf(ctx context.Context, devices []string) ([]registry.Tunnel, error)
	RecordSlots(ctx context.Context, grants []registry.SlotGrant) error
	Revocations(ctx context.Context, after int64, limit int) ([]registry.Revocation, error)
	RevocationSeq(ctx context.Context) (int64, error)

	// ReadOnly says why the registry was opened read-only ("": writable).
	ReadOnly() string

	// Several masters on one database (peers.go).
	Postgres() bool
	SlaveDevices(ctx context.Context, slaves []string) (map[string][]string, error)
	SharePending(ctx context.Context, master string, counts map[string]int, at time.Time) error
	PeerPending(ctx context.Context, self string, since time.Time) (map[string]int, error)

	// History (history.go).
	RecordLoad(ctx context.Context, samples []registry.LoadSample) error
	PruneLoad(ctx context.Context, before time.Time) (int64, error)
	LoadHistory(ctx context.Context, since, until time.Time) ([]registry.LoadSample, error)
	SeriesHistory(ctx context.Context, series string, since, until time.Time) ([]registry.LoadSample, error)
	DeviceHistory(ctx context.Context, device string, since time.Time) ([]registry.Event, error)
	TopDisconnects(ctx context.Context, since time.Time, n int) ([]registry.DeviceCount, error)
}

// Config configures a Server. Store and AdminToken are required; zero
// values of the rest mean the defaults above.
type Config struct {
	Store      Store
	Logger     *slog.Logger
	AdminToken string
	// SlaveToken is the shared slave token of older installs, accepted for
	// every slave that has no credential of its own; "" (the default)
	// accepts none, and each slave must present its own credential (POST
	// /slaves issues them). The command line sets it only behind
	// --allow-shared-slave-token.
	SlaveToken string
	// PortRange is where devices enrolled through the API (POST /devices,
	// auto-enrolment) lease their ports. Zero: registry.DefaultPortRange.
	PortRange registry.PortRange
	// Validator decides on keys besides the registry; nil: the registry
	// alone (known and active devices only).
	Validator validator.Validator
	// HeartbeatInterval is how often slaves are told to report; a slave
	// silent for registry.DeadAfter intervals is dead.
	HeartbeatInterval time.Duration
	// CacheTTL is how long slaves may serve a validated device from cache.
	CacheTTL time.Duration
	// SlotRate and SlotBurst make the per-source-address token bucket of
	// POST /slots. A negative SlotRate disables the limit.
	SlotRate  float64
	SlotBurst int
	// AllowUnsignedSlots accepts slot requests without a proof of
	// possession (fleets of dropbear-only devices, which cannot sign);
	// their answers carry no device name and no forward to another host.
	AllowUnsignedSlots bool
	// PublicURLs are the URLs devices reach the master at; a slot
	// signature must name one. None: a name of the TLS certificate, or,
	// without TLS, any (a warning at start).
	PublicURLs []string
	// SlotEventInterval is how often a device's repeated slot events are
	// written as one row; zero: DefaultSlotEventInterval.
	SlotEventInterval time.Duration
	// TLSCertFile and TLSKeyFile make Serve speak HTTPS.
	TLSCertFile string
	TLSKeyFile  string
	// PeerSync is how often the live view is reread from the store, for
	// several masters on one database (peers.go). 0: DefaultPeerSync on
	// PostgreSQL, never on SQLite (one master per file); negative: never.
	PeerSync time.Duration
	// Now is the clock; nil: time.Now. A seam for tests.
	Now func() time.Time
	// Metrics is where the master's metrics are registered and GET /metrics
	// serves from; nil: a fresh registry for this server.
	Metrics *prometheus.Registry
}

// Server is the master's HTTP face.
type Server struct {
	cfg Config
	id  string // this master process among its peers (peers.go); "" without peer sync
	// credCache holds the slave credential hashes last read, by name, for
	// while the store does not answer (slaveCredentialHash).
	credCache sync.Map
	store     Store
	log       *slog.Logger
	now       func() time.Time
	engine    *gin.Engine
	admin     [sha256.Size]byte
	slave     [sha256.Size]byte // the shared slave token's hash, when sharedSlave
	limiter   *ipLimiter
	// access is POST /access's own limiter (the slot request rate, per
	// source): operators and devices behind one address do not starve
	// each other.
	access  *ipLimiter
	metrics *metrics.Master
	live    *liveSlaves
	revoked *feed // wakes slaves waiting for revocations

	// Slot requests' proofs (slotproof.go) and folded events (slotevents.go).
	proof      *slotProof
	slotEvents *slotEvents
	// sharedSlave: the shared slave token is accepted (Config.SlaveToken).
	sharedSlave bool
	sharedUsers sharedUsers // slaves seen using it
	slaveAuth   *metrics.SlaveAuth
	health      storeHealth // whether the registry takes writes (storehealth.go)

	// Slot grants are written by one goroutine in groups (see recordSlot).
	writes   chan *slotWrite
	stop     chan struct{}
	stopOnce sync.Once
	writerWG sync.WaitGroup

	dash     *dashGuard     // the dashboard's login backoff and origin check
	refusals *refusals      // refused keys, tallied per source and interval
	gate     *validatorGate // the validator's rate limit and negative cache
}

// New checks cfg and loads the slaves the registry knows, so that a
// restarted master dispatches to the slaves that were live before it at
// once, without waiting for their next heartbeat.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("starting the master: no store")
	}
	if cfg.AdminToken == "" {
		return nil, errors.New("starting the master: the admin token is required")
	}
	if cfg.AdminToken == cfg.SlaveToken {
		return nil, errors.New("starting the master: the admin and slave tokens must differ, or a slave could act as admin")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.PortRange == (registry.PortRange{}) {
		cfg.PortRange = registry.DefaultPortRange
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if cfg.CacheTTL <= 0 {
		cfg.CacheTTL = DefaultCacheTTL
	}
	if cfg.SlotRate == 0 {
		cfg.SlotRate = DefaultSlotRate
	}
	if cfg.SlotBurst <= 0 {
		cfg.SlotBurst = DefaultSlotBurst
	}
	if cfg.SlotEventInterval <= 0 {
		cfg.SlotEventInterval = DefaultSlotEventInterval
	}
	if (cfg.TLSCertFile == "") != (cfg.TLSKeyFile == "") {
		return nil, errors.New("starting the master: TLS needs both a certificate and a key file")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{
		cfg:     cfg,
		store:   cfg.Store,
		log:     cfg.Logger.With("component", "api"),
		now:     cfg.Now,
		admin:   sha256.Sum256([]byte(cfg.AdminToken)),
		writes:  make(chan *slotWrite, maxSlotBatch),
		revoked: newFeed(),
		dash:    newDashGuard(cfg.AdminToken),
		stop:    make(chan struct{}),
	}
	if cfg.SlaveToken != "" {
		s.slave, s.sharedSlave = sha256.Sum256([]byte(cfg.SlaveToken)), true
		s.log.Warn("the shared slave token is accepted: whoever holds it can heartbeat, validate keys and follow revocations " +
			"as any slave without a credential of its own, and register new ones; give each slave its own credential " +
			"(mas4h slave add NAME) and then restart the master without --allow-shared-slave-token")
	}
	if cfg.SlotRate > 0 {
		s.limiter = newIPLimiter(cfg.SlotRate, cfg.SlotBurst)
		s.access = newIPLimiter(cfg.SlotRate, cfg.SlotBurst)
	}
	proof, err := newSlotProof(cfg, s.log)
	if err != nil {
		return nil, fmt.Errorf("starting the master: %w", err)
	}
	s.proof = proof
	s.slotEvents = newSlotEvents()
	s.refusals, s.gate = s.newRefusals(), newValidatorGate()
	known, err := s.store.Slaves(ctx)
	if err != nil {
		return nil, fmt.Errorf("starting the master: loading slaves: %w", err)
	}
	s.live = newLiveSlaves(cfg.Now, cfg.HeartbeatInterval, pendingTTL(cfg.HeartbeatInterval), known)
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewRegistry()
		s.cfg.Metrics = cfg.Metrics
	}
	if s.metrics, err = metrics.NewMaster(cfg.Metrics, s.metricsSnapshot); err != nil {
		return nil, fmt.Errorf("starting the master: registering metrics: %w", err)
	}
	if s.slaveAuth, err = metrics.NewSlaveAuth(cfg.Metrics); err != nil {
		return nil, fmt.Errorf("starting the master: registering metrics: %w", err)
	}
	if why := s.store.ReadOnly(); why != "" {
		s.storeFailed(fmt.Errorf("the registry was opened read-only, as its file could not be opened for writing (%s); free space on its filesystem and restart the master", why))
	}
	s.engine = s.routes()
	s.writerWG.Add(2)
	go s.slotWriter()
	go s.slotEventLoop()
	if s.cfg.PeerSync == 0 && s.store.Postgres() {
		s.cfg.PeerSync = DefaultPeerSync
	}
	if s.cfg.PeerSync > 0 {
		s.id = newMasterID()
		s.writerWG.Add(1)
		go s.peerLoop()
	}
	return s, nil
}

// Close stops the server's background writer. Call it after Serve has
// returned (or, with Handler alone, once no request is in flight).
func (s *Server) Close() {
	s.stopOnce.Do(func() { close(s.stop) })
	s.writerWG.Wait()
	s.refusals.close()
}

// maxSlotBatch bounds the grants committed in one transaction.
const maxSlotBatch = 256

type slotWrite struct {
	grant registry.SlotGrant
	done  chan error
}

// recordSlot records a grant and returns once it is committed. Grants of
// concurrent requests are committed together: SQLite takes one writer at a
// time, and a transaction per grant would cap slots per second at commits
// per second.
func (s *Server) recordSlot(ctx context.Context, device, slave string) error {
	w := &slotWrite{grant: registry.SlotGrant{Device: device, Slave: slave}, done: make(chan error, 1)}
	select {
	case s.writes <- w:
	case <-s.stop:
		return errors.New("recording the slot: the master is shutting down")
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Server) slotWriter() {
	defer s.writerWG.Done()
	for {
		var first *slotWrite
		select {
		case <-s.stop:
			return
		case first = <-s.writes:
		}
		batch := []*slotWrite{first}
	drain:
		for len(batch) < maxSlotBatch {
			select {
			case w := <-s.writes:
				batch = append(batch, w)
			default:
				break drain
			}
		}
		grants := make([]registry.SlotGrant, len(batch))
		for i, w := range batch {
			grants[i] = w.grant
		}
		err := s.store.RecordSlots(context.Background(), grants)
		if err == nil {
			s.storeWrote()
		}
		for _, w := range batch {
			w.done <- err
		}
	}
}

// Handler is the API as an http.Handler, for Serve and for httptest.
func (s *Server) Handler() http.Handler { return s.engine }

// Serve answers on ln until ctx is cancelled, then shuts down gracefully:
// requests in flight get up to 10 s to finish. It also runs the loop that
// marks silent slaves dead. Cancellation is not an error.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.engine,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	srv.RegisterOnShutdown(s.revoked.stop)
	loopCtx, stopLoop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.livenessLoop(loopCtx)
	}()
	shutdownErr := make(chan error, 1)
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		shutdownErr <- srv.Shutdown(sctx)
	}()
	var err error
	if s.cfg.TLSCertFile != "" {
		err = srv.ServeTLS(ln, s.cfg.TLSCertFile, s.cfg.TLSKeyFile)
	} else {
		err = srv.Serve(ln)
	}
	stopLoop()
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		if err := <-shutdownErr; err != nil {
			return fmt.Errorf("shutting down the API server: %w", err)
		}
		return nil
	}
	return fmt.Errorf("serving the API: %w", err)
}

// livenessLoop marks slaves dead once per heartbeat interval, and then
// samples the fleet's load for the dashboard's history.
func (s *Server) livenessLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.checkSlaves(ctx)
			s.sampleLoad(ctx)
		}
	}
}

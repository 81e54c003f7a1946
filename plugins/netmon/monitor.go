package netmon

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	hclog "github.com/hashicorp/go-hclog"

	"github.com/vigil-hids/vigil/sdk"
)

// maxPending bounds the new outbound connections kept for attribution and
// aggregation per snapshot; beyond it they are only counted (blocklisted
// ones are always kept). A variable so a test can lower it.
var maxPending = 16384

// listenerKey identifies a listening socket.
type listenerKey struct {
	addr   [16]byte
	netns  uint32 // the same port in two namespaces is two listeners
	port   uint16
	proto  uint8
	family uint8
}

type listener struct {
	inode uint32
	uid   uint32
	pid   int32
	exe   string
}

// aggKey groups new outbound connections per process and remote endpoint.
type aggKey struct {
	remote [16]byte
	netns  uint32
	pid    int32
	port   uint16
	proto  uint8
	family uint8
}

type aggVal struct {
	count int
	first Socket
}

// Mode is how the last snapshot ran.
type Mode string

// Modes reported in status events.
const (
	ModeNormal    Mode = "normal"
	ModeSlowed    Mode = "slowed"    // the interval was stretched to keep the CPU share
	ModeTruncated Mode = "truncated" // the snapshot hit its CPU budget and stopped early
)

// Stats describes one snapshot.
type Stats struct {
	Sockets     int           // sockets dumped
	Listeners   int           // listening sockets
	NewOutbound int           // new outbound connections
	CPU         time.Duration // CPU time of the snapshot's thread
	Wall        time.Duration
	Truncated   bool
	Fallback    bool // read /proc/net instead of sock_diag
	Misses      int  // new sockets left unattributed
	Scanned     int  // processes scanned for attribution
	Deferred    int  // processes left for a later snapshot
	Events      int
	NetNSDumped int // namespaces other than the plugin's own dumped completely
	NetNSFailed int // namespaces whose dump failed
	NetNSLeft   int // namespaces not reached (budget spent)
}

// monitor takes snapshots, diffs them against the previous one and emits
// events and alerts. It is used by one goroutine.
type monitor struct {
	cfg   *Config
	log   hclog.Logger
	clock sdk.Clock
	em    sdk.Emitter

	dump *dumper // nil: sock_diag unavailable, read /proc/net
	// noCompat: the kernel refused a TCPDIAG_GETSOCK dump, so TCP is
	// dumped per address family.
	noCompat bool
	// selfNS is the plugin's own network namespace; nss the others
	// (all_namespaces), dumped in nsOrder (by inode) after it.
	selfNS   uint32
	nss      map[uint32]*netNS
	nsOrder  []uint32
	nsListed bool
	// nsWarned: failures to open a namespace logged, by reason (netns.go).
	nsWarned map[string]*nsWarned
	// nsNext is the namespace the others' dumps start from (see collect).
	nsNext uint32
	// nsFailed: namespaces whose dump failed in this snapshot.
	nsFailed []uint32
	// nsComplete: namespaces (ours included) dumped completely in this
	// snapshot, so a truncated snapshot still reports what closed in them.
	nsComplete map[uint32]bool
	res        *resolver
	started    time.Time
	first      bool
	block      []netip.Prefix
	// ephemeral port range, for telling UDP servers from UDP clients
	ephLo, ephHi uint16

	baselinePorts map[uint32]bool // proto<<16 | port
	baselineExes  map[string]bool

	listeners, prevListeners map[listenerKey]listener
	seen                     *inodeSet // every inet socket inode, by the snapshot that last saw it
	lastComplete             bool
	pending                  []Socket
	wanted                   map[uint32]bool
	agg                      map[aggKey]*aggVal
	aggOrder                 []aggKey

	sock               Socket
	onListenFn, onConn func(*Socket)
	onUDPFn            func(*Socket)
	newOutbound        int
	unreported         int
	emitted            int
	ev                 sdk.Event
	mode               Mode
	interval           time.Duration // the last wait chosen by pace
	c                  counters
}

type counters struct {
	snapshots, truncated, slowed, sockets, cpu           *sdk.Counter
	misses, scans, fds, deferred, suppressed, unreported *sdk.Counter
	interrupted, dumpErrors, fallback                    *sdk.Counter
	netns, nsDumped, nsErrors, nsSkipped                 *sdk.Counter
}

func newMonitor(cfg *Config, log hclog.Logger, clock sdk.Clock, em sdk.Emitter) (*monitor, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	m := &monitor{
		log:           log,
		clock:         clock,
		em:            em,
		started:       clock.Now(),
		first:         true,
		ephLo:         32768,
		ephHi:         60999,
		baselinePorts: map[uint32]bool{},
		baselineExes:  map[string]bool{},
		listeners:     map[listenerKey]listener{},
		prevListeners: map[listenerKey]listener{},
		seen:          newInodeSet(),
		lastComplete:  true,
		wanted:        map[uint32]bool{},
		agg:           map[aggKey]*aggVal{},
		mode:          ModeNormal,
		selfNS:        selfNetNS(),
		nss:           map[uint32]*netNS{},
		nsComplete:    map[uint32]bool{},
	}
	m.onListenFn = m.onListen
	m.onConn = m.onConnection
	m.onUDPFn = m.onUDP
	m.c = counters{
		snapshots: em.Counter(CounterSnapshots), truncated: em.Counter(CounterTruncated),
		slowed: em.Counter(CounterSlowed), sockets: em.Counter(CounterSockets), cpu: em.Counter(CounterSnapshotCPU),
		misses: em.Counter(CounterAttributionMisses), scans: em.Counter(CounterAttributionScans),
		fds: em.Counter(CounterAttributionFDs), deferred: em.Counter(CounterAttributionDefer),
		suppressed: em.Counter(CounterEventsSuppressed), unreported: em.Counter(CounterOutboundUnreported),
		interrupted: em.Counter(CounterDumpInterrupted), dumpErrors: em.Counter(CounterDumpErrors),
		fallback: em.Counter(CounterProcNetFallback),
		netns:    em.Counter(CounterNetNS), nsDumped: em.Counter(CounterNetNSDumped),
		nsErrors: em.Counter(CounterNetNSErrors), nsSkipped: em.Counter(CounterNetNSSkipped),
	}
	if lo, hi, ok := readPortRange(cfg.ProcRoot); ok {
		m.ephLo, m.ephHi = lo, hi
	}
	d, err := newDumper(0)
	if err != nil {
		log.Warn("sock_diag unavailable, falling back to /proc/net", "error", err)
	} else {
		d.warm = m.seen.warm
		m.dump = d
	}
	if err := m.apply(cfg); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// apply switches to a new validated config.
func (m *monitor) apply(cfg *Config) error {
	if m.res == nil || m.cfg == nil || m.cfg.ProcRoot != cfg.ProcRoot || !equalStrings(m.cfg.Shells, cfg.Shells) ||
		m.cfg.AllNamespaces != cfg.AllNamespaces {
		if m.res != nil {
			_ = m.res.Close()
			m.res = nil
		}
		m.closeNetNS()
		m.nsListed = false
		r, err := newResolver(cfg.ProcRoot, cfg.Shells)
		if err != nil {
			return fmt.Errorf("starting process attribution: %w", err)
		}
		r.trackNS = cfg.AllNamespaces
		m.res = r
	}
	m.cfg = cfg
	m.block = cfg.blocklist()
	for _, p := range cfg.BaselinePorts {
		m.baselinePorts[protoTCP<<16|uint32(p)] = true
		m.baselinePorts[protoUDP<<16|uint32(p)] = true
	}
	for _, e := range cfg.BaselineExes {
		m.baselineExes[e] = true
	}
	return nil
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Close releases the netlink socket and the procfs handle.
func (m *monitor) Close() {
	m.closeNetNS()
	if m.dump != nil {
		_ = m.dump.Close()
	}
	if m.res != nil {
		_ = m.res.Close()
	}
}

// readPortRange reads net.ipv4.ip_local_port_range.
func readPortRange(procRoot string) (lo, hi uint16, ok bool) {
	b, err := os.ReadFile(procRoot + "/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, false
	}
	l, err1 := strconv.ParseUint(f[0], 10, 16)
	h, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return uint16(l), uint16(h), true
}

// TCP states as idiag_states masks. tcpConnMask is every state of a
// connection (ESTABLISHED 1 through CLOSING 11, and NEW_SYN_RECV 12) but
// LISTEN. It leaves out TCP_BOUND_INACTIVE (13, Linux >= 6.8): asking for
// it makes the kernel walk its whole bind hash table, every bound socket of
// every connection, on each dump: a fifth of a profile of snapshots of
// 200,000 sockets; a bound socket that neither listens nor connects is
// neither a listener nor a connection. ss -tan (iproute2 6.1) does not ask
// for it either.
const (
	tcpListenMask = 1 << stateListen
	tcpConnMask   = (1<<13 - 1) &^ (1 | tcpListenMask)
	// TIME_WAIT and NEW_SYN_RECV (12), for skip_time_wait.
	tcpNoProcessMask = 1<<stateTimeWait | 1<<12
	allStates        = ^uint32(0)
)

// snapshot takes one snapshot, diffs it and emits what changed.
func (m *monitor) snapshot() (Stats, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	wall := time.Now()
	b := newBudget(m.cfg.SnapshotBudget.D(), m.cfg.AttributionFDs)
	var st Stats

	m.prevListeners, m.listeners = m.listeners, m.prevListeners
	clear(m.listeners)
	m.seen.begin(m.lastComplete)
	m.pending = m.pending[:0]
	m.newOutbound, m.unreported, m.emitted = 0, 0, 0
	m.nsFailed = m.nsFailed[:0]
	clear(m.nsComplete)
	if m.cfg.AllNamespaces && !m.nsListed && m.res != nil {
		// The first snapshot finds the namespaces before it dumps; later
		// ones use what the previous snapshot's listing found.
		m.res.list()
		m.syncNetNS()
		m.nsListed = true
	}

	err := m.collect(b, &st)
	if err != nil && !errors.Is(err, ErrBudget) {
		m.c.dumpErrors.Add(1)
	}
	// A dump cut short, by the budget or an error, still reports what it
	// saw; sockets it did not reach are not gone: they keep their state.
	// Those of a namespace dumped completely, or no longer open, are not
	// kept: they are reported closed (or every snapshot being cut short,
	// on a host of many namespaces, would keep them for ever).
	st.Truncated = err != nil
	if st.Truncated {
		for k, v := range m.prevListeners {
			if _, ok := m.listeners[k]; !ok && !m.nsComplete[k.netns] && (k.netns == m.selfNS || m.nss[k.netns] != nil) {
				m.listeners[k] = v
			}
		}
	}
	m.lastComplete = !st.Truncated
	if len(m.nsFailed) > 0 && !st.Truncated {
		m.keepFailedNetNS()
	}
	st.Listeners = len(m.listeners)
	st.NewOutbound = m.newOutbound

	var shells []int32
	if m.res != nil && m.cfg.AttributionFDs > 0 {
		shells = m.attribute(b, &st)
	} else if m.res != nil && m.cfg.AllNamespaces {
		m.res.list()
	}
	if m.cfg.AllNamespaces {
		m.syncNetNS()
	} else {
		m.c.netns.Set(1)
	}
	m.report(shells, &st)

	st.CPU = b.used()
	st.Wall = time.Since(wall)
	st.Events = m.emitted
	m.c.snapshots.Add(1)
	m.c.sockets.Set(uint64(st.Sockets))
	m.c.cpu.Set(uint64(st.CPU / time.Microsecond))
	if st.Truncated {
		m.c.truncated.Add(1)
	}
	m.c.nsDumped.Add(uint64(st.NetNSDumped))
	m.c.nsSkipped.Add(uint64(st.NetNSLeft))
	m.first = false
	if errors.Is(err, ErrBudget) {
		err = nil
	}
	return st, err
}

// collect dumps listeners, then UDP, then TCP connections, so a
// connection's direction can be told from the listeners already seen.
func (m *monitor) collect(b *budget, st *Stats) error {
	m.sock.NetNS = m.selfNS
	if m.dump == nil {
		st.Fallback = true
		m.c.fallback.Add(1)
		return m.collectProcNet(st)
	}
	if err := m.collectNS(m.dump, b, st); err != nil {
		st.NetNSLeft = len(m.nsOrder)
		return err
	}
	m.nsComplete[m.selfNS] = true
	// The others start where the last snapshot the budget cut short
	// stopped, so namespaces late in the order are reached too.
	start, _ := slices.BinarySearch(m.nsOrder, m.nsNext)
	for k := range m.nsOrder {
		i := (start + k) % len(m.nsOrder)
		ino := m.nsOrder[i]
		// The budget is polled within a dump only after a datagram that
		// does not end it, and a namespace without sockets answers each
		// dump with NLMSG_DONE alone: check it before each namespace.
		if b.overCPU() {
			st.NetNSLeft = len(m.nsOrder) - k
			m.nsNext = ino
			return ErrBudget
		}
		n := m.nss[ino]
		if n.d == nil {
			continue // its socket could not be created: counted and logged when found
		}
		m.sock.NetNS = ino
		err := m.collectNS(n.d, b, st)
		if errors.Is(err, ErrBudget) {
			st.NetNSLeft = len(m.nsOrder) - k
			// Resume after it: one whose dumps alone spend the budget
			// does not keep the others from being reached.
			m.nsNext = m.nsOrder[(i+1)%len(m.nsOrder)]
			return err
		}
		if err != nil {
			// One namespace failing does not stop the others.
			n.fails++
			st.NetNSFailed++
			m.nsFailed = append(m.nsFailed, ino)
			m.c.nsErrors.Add(1)
			if !n.logged {
				n.logged = true
				m.log.Warn("dumping the sockets of a network namespace failed", "netns", ino, "container", n.container, "error", err)
			}
			continue
		}
		n.fails = 0
		st.NetNSDumped++
		m.nsComplete[ino] = true
	}
	return nil
}

// collectNS dumps one namespace through d.
func (m *monitor) collectNS(d *dumper, b *budget, st *Stats) error {
	conn := uint32(tcpConnMask)
	if m.cfg.SkipTimeWait {
		conn &^= tcpNoProcessMask
	}
	if err := m.dumpTCP(d, tcpListenMask, m.onListenFn, b, st); err != nil {
		return err
	}
	if m.cfg.UDP {
		for _, fam := range [...]uint8{afInet, afInet6} {
			if _, err := m.dumpOne(d, fam, protoUDP, allStates, m.onUDPFn, b, st); err != nil {
				return err
			}
		}
	}
	return m.dumpTCP(d, conn, m.onConn, b, st)
}

// keepFailedNetNS keeps the listeners of the namespaces whose dump failed
// (they are not closed: they were not seen). Their connections are not
// forgotten either, unless the namespace failed three times in a row (so
// a namespace that keeps failing does not keep every inode known forever).
func (m *monitor) keepFailedNetNS() {
	for _, ino := range m.nsFailed {
		for k, v := range m.prevListeners {
			if k.netns == ino {
				m.listeners[k] = v
			}
		}
		if n := m.nss[ino]; n != nil && n.fails <= 3 {
			m.lastComplete = false
		}
	}
}

// dumpTCP dumps the TCP sockets in states, IPv4 and IPv6 in one dump
// (TCPDIAG_GETSOCK: one walk of the kernel's tables instead of one per
// family). A kernel that refuses that request is asked per family, from
// then on.
func (m *monitor) dumpTCP(d *dumper, states uint32, fn func(*Socket), b *budget, st *Stats) error {
	if !m.noCompat {
		r, err := m.dumpOne(d, afUnspec, protoTCP, states, fn, b, st)
		if err == nil || r.sockets > 0 || !errors.Is(err, ErrDumpRefused) {
			return err
		}
		m.log.Info("sock_diag refused a TCPDIAG_GETSOCK dump, dumping TCP per address family", "error", err)
		m.noCompat = true
	}
	for _, fam := range [...]uint8{afInet, afInet6} {
		if _, err := m.dumpOne(d, fam, protoTCP, states, fn, b, st); err != nil {
			return err
		}
	}
	return nil
}

func (m *monitor) dumpOne(d *dumper, family, proto uint8, states uint32, fn func(*Socket), b *budget, st *Stats) (dumpResult, error) {
	r, err := d.dump(family, proto, states, &m.sock, fn, b.overCPU)
	st.Sockets += r.sockets
	if r.interrupted {
		m.c.interrupted.Add(1)
	}
	return r, err
}

func (m *monitor) onListen(s *Socket) {
	k := listenerKey{addr: s.Local, netns: s.NetNS, port: s.LocalPort, proto: s.Proto, family: s.Family}
	if _, ok := m.listeners[k]; ok {
		return // SO_REUSEPORT sibling
	}
	m.listeners[k] = listener{inode: s.Inode, uid: s.UID}
	m.seen.see(s.Inode)
}

// onUDP takes a UDP socket: unconnected on a port outside the ephemeral
// range is a server (a listener); connected is a connection.
func (m *monitor) onUDP(s *Socket) {
	if s.RemotePort == 0 {
		if s.LocalPort != 0 && (s.LocalPort < m.ephLo || s.LocalPort > m.ephHi) {
			m.onListen(s)
		} else {
			m.seen.see(s.Inode)
		}
		return
	}
	m.onConnection(s)
}

func (m *monitor) onConnection(s *Socket) {
	if s.Inode == 0 {
		return // TIME_WAIT and request sockets belong to no process
	}
	if !m.seen.see(s.Inode) || s.RemotePort == 0 || m.inbound(s) {
		return
	}
	m.newOutbound++
	if len(m.pending) < maxPending || m.blocked(s) {
		m.pending = append(m.pending, *s)
		return
	}
	m.unreported++
}

// inbound reports whether s was accepted from one of our listeners.
func (m *monitor) inbound(s *Socket) bool {
	k := listenerKey{addr: s.Local, netns: s.NetNS, port: s.LocalPort, proto: s.Proto, family: s.Family}
	if _, ok := m.listeners[k]; ok {
		return true
	}
	k.addr = [16]byte{}
	_, ok := m.listeners[k]
	return ok
}

func (m *monitor) blocked(s *Socket) bool {
	if len(m.block) == 0 {
		return false
	}
	a := s.RemoteAddr().Unmap()
	for _, p := range m.block {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// attribute resolves the new sockets' owners and returns shells newly found
// holding inet sockets.
func (m *monitor) attribute(b *budget, st *Stats) []int32 {
	clear(m.wanted)
	for k, l := range m.listeners {
		if _, old := m.prevListeners[k]; !old && l.inode != 0 {
			if pid, _ := m.res.lookup(l.inode); pid == 0 {
				m.wanted[l.inode] = true
			}
		}
	}
	for i := range m.pending {
		if pid, _ := m.res.lookup(m.pending[i].Inode); pid == 0 {
			m.wanted[m.pending[i].Inode] = true
		}
	}
	r := m.res.refresh(m.seen.current, m.wanted, b)
	if !st.Truncated {
		m.res.prune(m.seen.current, m.seen.live)
	}
	st.Scanned, st.Deferred = r.scanned, r.deferred
	st.Misses = len(m.wanted)
	m.c.misses.Add(uint64(len(m.wanted)))
	m.c.scans.Set(m.res.scans)
	m.c.fds.Set(m.res.fdsRead)
	m.c.deferred.Add(uint64(r.deferred))
	return r.shells
}

// Monitor is the snapshot engine without the plugin protocol around it,
// for benchmarks and tools: each Snapshot dumps, diffs, attributes and
// emits to the Emitter exactly as the plugin's loop does.
type Monitor struct{ m *monitor }

// NewMonitor starts a Monitor with a validated config.
func NewMonitor(cfg *Config, log hclog.Logger, clock sdk.Clock, em sdk.Emitter) (*Monitor, error) {
	m, err := newMonitor(cfg, log, clock, em)
	if err != nil {
		return nil, err
	}
	return &Monitor{m: m}, nil
}

// Snapshot takes one snapshot.
func (m *Monitor) Snapshot() (Stats, error) { return m.m.snapshot() }

// Pace returns the wait before the next snapshot after one that went as st.
func (m *Monitor) Pace(st Stats) time.Duration { return m.m.pace(st) }

// Close releases the Monitor's sockets and handles.
func (m *Monitor) Close() { m.m.Close() }

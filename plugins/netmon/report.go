package netmon

import (
	"fmt"
	"time"

	"github.com/vigil-hids/vigil/sdk"
)

// report emits the differences and the alerts.
func (m *monitor) report(shells []int32, st *Stats) {
	learning := m.clock.Now().Sub(m.started) < m.cfg.LearningPeriod.D()
	for k, l := range m.listeners {
		if _, old := m.prevListeners[k]; old {
			m.listeners[k] = m.prevListeners[k]
			continue
		}
		pid, p := m.res.lookup(l.inode)
		l.pid = pid
		var comm string
		if p != nil {
			l.exe, comm = p.exe, p.comm
		}
		m.listeners[k] = l
		m.emitListener(TypeListenerNew, k, l, comm)
		portKey := uint32(k.proto)<<16 | uint32(k.port)
		if learning {
			m.baselinePorts[portKey] = true
			if l.exe != "" {
				m.baselineExes[l.exe] = true
			}
			continue
		}
		newPort := !m.baselinePorts[portKey]
		newExe := l.exe != "" && !m.baselineExes[l.exe]
		if newPort || newExe {
			reason := "port"
			switch {
			case newPort && newExe:
				reason = "port,exe"
			case newExe:
				reason = "exe"
			}
			m.alertListener(k, l, comm, reason)
		}
	}
	// A truncated snapshot kept the listeners it did not reach (snapshot).
	for k, l := range m.prevListeners {
		if _, ok := m.listeners[k]; !ok {
			m.emitListener(TypeListenerClosed, k, l, "")
		}
	}
	m.reportOutbound()
	for _, pid := range shells {
		m.alertShell(pid)
	}
	if m.unreported > 0 {
		m.c.unreported.Add(uint64(m.unreported))
	}
}

// reportOutbound aggregates the new outbound connections per process and
// remote endpoint and emits one event per group.
func (m *monitor) reportOutbound() {
	clear(m.agg)
	m.aggOrder = m.aggOrder[:0]
	for i := range m.pending {
		s := &m.pending[i]
		var pid int32
		if m.res != nil {
			pid, _ = m.res.lookup(s.Inode)
		}
		k := aggKey{remote: s.Remote, netns: s.NetNS, pid: pid, port: s.RemotePort, proto: s.Proto, family: s.Family}
		if v, ok := m.agg[k]; ok {
			v.count++
			continue
		}
		m.agg[k] = &aggVal{count: 1, first: *s}
		m.aggOrder = append(m.aggOrder, k)
	}
	for _, k := range m.aggOrder {
		v := m.agg[k]
		var exe, comm string
		if m.res != nil {
			if p := m.res.procs[k.pid]; p != nil && k.pid != 0 {
				exe, comm = p.exe, p.comm
			}
		}
		s := &v.first
		if m.telemetryAllowed() {
			m.ev = sdk.Event{Type: TypeConnectionNew, Severity: sdk.SevInfo, Fields: m.ev.Fields[:0]}
			m.ev.Fields = append(m.ev.Fields,
				sdk.String("proto", s.ProtoName()), sdk.String("family", s.FamilyName()),
				sdk.String("remote_addr", s.RemoteAddr().String()), sdk.Int("remote_port", int64(s.RemotePort)),
				sdk.String("local_addr", s.LocalAddr().String()), sdk.Int("local_port", int64(s.LocalPort)),
				sdk.Int("count", int64(v.count)), sdk.Int("uid", int64(s.UID)),
				sdk.Int("pid", int64(k.pid)), sdk.String("exe", exe), sdk.String("comm", comm),
				sdk.Bool("initial", m.first))
			m.ev.Fields = m.nsFields(m.ev.Fields, s.NetNS)
			m.emit()
		}
		if m.blocked(s) {
			m.ev = sdk.Event{Type: RuleOutboundBlocklisted, Alert: true, Severity: SevOutboundBlocklisted, Fields: m.ev.Fields[:0]}
			m.ev.Fields = append(m.ev.Fields, sdk.String("rule", RuleOutboundBlocklisted),
				sdk.String("proto", s.ProtoName()), sdk.String("family", s.FamilyName()),
				sdk.String("remote_addr", s.RemoteAddr().String()), sdk.Int("remote_port", int64(s.RemotePort)),
				sdk.Int("count", int64(v.count)), sdk.Int("uid", int64(s.UID)),
				sdk.Int("pid", int64(k.pid)), sdk.String("exe", exe), sdk.String("comm", comm))
			m.ev.Fields = m.nsFields(m.ev.Fields, s.NetNS)
			m.emit()
		}
	}
}

func (m *monitor) telemetryAllowed() bool {
	if m.emitted < m.cfg.MaxEventsPerSnapshot {
		return true
	}
	m.c.suppressed.Add(1)
	return false
}

func (m *monitor) emit() {
	if !m.ev.Alert {
		m.emitted++
	}
	_ = m.em.Emit(&m.ev) // a drop is counted by the SDK
}

func (m *monitor) emitListener(typ string, k listenerKey, l listener, comm string) {
	if !m.telemetryAllowed() {
		return
	}
	m.ev = sdk.Event{Type: typ, Severity: sdk.SevInfo, Fields: m.ev.Fields[:0]}
	m.ev.Fields = append(m.listenerFields(m.ev.Fields, k, l, comm), sdk.Bool("initial", m.first))
	m.emit()
}

func (m *monitor) listenerFields(f []sdk.Field, k listenerKey, l listener, comm string) []sdk.Field {
	s := Socket{Local: k.addr, LocalPort: k.port, Proto: k.proto, Family: k.family}
	f = append(f,
		sdk.String("proto", s.ProtoName()), sdk.String("family", s.FamilyName()),
		sdk.String("local_addr", s.LocalAddr().String()), sdk.Int("local_port", int64(k.port)),
		sdk.Int("uid", int64(l.uid)), sdk.Int("pid", int64(l.pid)), sdk.String("exe", l.exe), sdk.String("comm", comm))
	return m.nsFields(f, k.netns)
}

// nsFields appends the socket's network namespace (inode) and, when the
// namespace was found through a process in a container, the container.
func (m *monitor) nsFields(f []sdk.Field, ino uint32) []sdk.Field {
	f = append(f, sdk.Int("netns", int64(ino)))
	if n := m.nss[ino]; n != nil && n.container != "" {
		f = append(f, sdk.String("container_runtime", n.runtime), sdk.String("container_id", n.container))
		if n.pod != "" {
			f = append(f, sdk.String("pod_uid", n.pod))
		}
	}
	return f
}

func (m *monitor) alertListener(k listenerKey, l listener, comm, reason string) {
	m.ev = sdk.Event{Type: RuleListenerUnexpected, Alert: true, Severity: SevListenerUnexpected, Fields: m.ev.Fields[:0]}
	m.ev.Fields = append(m.ev.Fields, sdk.String("rule", RuleListenerUnexpected), sdk.String("reason", reason))
	m.ev.Fields = m.listenerFields(m.ev.Fields, k, l, comm)
	m.emit()
}

func (m *monitor) alertShell(pid int32) {
	p := m.res.procs[pid]
	if p == nil {
		return
	}
	m.ev = sdk.Event{Type: RuleShellSocket, Alert: true, Severity: SevShellSocket, Fields: m.ev.Fields[:0]}
	m.ev.Fields = append(m.ev.Fields, sdk.String("rule", RuleShellSocket),
		sdk.Int("pid", int64(pid)), sdk.String("exe", p.exe), sdk.String("comm", p.comm),
		sdk.Int("sockets", int64(len(p.inodes))))
	// Name one of its endpoints when this snapshot has it.
	for _, ino := range p.inodes {
		for i := range m.pending {
			if s := &m.pending[i]; s.Inode == ino {
				m.ev.Fields = append(m.ev.Fields, sdk.String("proto", s.ProtoName()),
					sdk.String("remote_addr", s.RemoteAddr().String()), sdk.Int("remote_port", int64(s.RemotePort)),
					sdk.String("local_addr", s.LocalAddr().String()), sdk.Int("local_port", int64(s.LocalPort)))
				m.ev.Fields = m.nsFields(m.ev.Fields, s.NetNS)
				m.emit()
				return
			}
		}
		for k, l := range m.listeners {
			if l.inode == ino {
				ls := Socket{Local: k.addr, LocalPort: k.port, Proto: k.proto, Family: k.family, NetNS: k.netns}
				m.ev.Fields = append(m.ev.Fields, sdk.String("proto", ls.ProtoName()), sdk.Bool("listening", true),
					sdk.String("local_addr", ls.LocalAddr().String()), sdk.Int("local_port", int64(k.port)))
				m.ev.Fields = m.nsFields(m.ev.Fields, k.netns)
				m.emit()
				return
			}
		}
	}
	m.emit()
}

// status emits a status event saying how the snapshots run.
func (m *monitor) status(mode Mode, reason string, st Stats, interval time.Duration) {
	m.ev = sdk.Event{Type: TypeStatus, Severity: sdk.SevNotice, Fields: m.ev.Fields[:0]}
	m.ev.Fields = append(m.ev.Fields, sdk.String("mode", string(mode)), sdk.String("reason", reason),
		sdk.Int("sockets", int64(st.Sockets)), sdk.Int("cpu_us", int64(st.CPU/time.Microsecond)),
		sdk.Int("interval_ms", int64(interval/time.Millisecond)), sdk.Bool("fallback", st.Fallback))
	_ = m.em.Emit(&m.ev)
}

// pace returns the wait before the next snapshot: the configured interval,
// stretched so the snapshots' CPU stays within cpu_percent of one core, and
// emits a status event when the mode changes.
func (m *monitor) pace(st Stats) time.Duration {
	interval := m.cfg.Interval.D()
	need := time.Duration(float64(st.CPU) * 100 / m.cfg.CPUPercent)
	mode, reason := ModeNormal, "within budget"
	if st.Truncated {
		// The snapshot wanted more than its budget: back off at least
		// twice as far as last time.
		need = max(need, 2*max(m.interval, interval))
	}
	if need > interval {
		interval = min(need, m.cfg.MaxInterval.D())
		mode = ModeSlowed
		reason = fmt.Sprintf("snapshot used %s of CPU; interval stretched to keep %.3g%% of one core", st.CPU.Round(time.Microsecond), m.cfg.CPUPercent)
		m.c.slowed.Add(1)
	}
	if st.Truncated {
		mode = ModeTruncated
		reason = fmt.Sprintf("snapshot reached its CPU budget of %s after %d sockets; sockets not reached keep their last state", m.cfg.SnapshotBudget.D(), st.Sockets)
	}
	m.interval = interval
	if mode != m.mode {
		m.log.Info("snapshot mode changed", "from", m.mode, "to", mode, "reason", reason, "sockets", st.Sockets)
		m.mode = mode
		m.status(mode, reason, st, interval)
	}
	return interval
}

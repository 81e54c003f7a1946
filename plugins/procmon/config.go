package procmon

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/vigil-hids/vigil/plugins/procmon/cnproc"
	"github.com/vigil-hids/vigil/sdk"
)

// Config is procmon's configuration. Zero or absent keys keep the defaults
// of DefaultConfig.
type Config struct {
	// ReceiveBuffer is the netlink socket's receive buffer. Set with
	// SO_RCVBUFFORCE when running as root, so it may exceed
	// net.core.rmem_max; it is what absorbs a burst while the reader is
	// descheduled.
	ReceiveBuffer int `json:"receive_buffer" vigil:"min=65536,max=1073741824" desc:"netlink receive buffer in bytes"`
	// QueueSize bounds the events waiting for the enrichment workers
	// (shared out among the workers).
	QueueSize int `json:"queue_size" vigil:"min=1024,max=1048576" desc:"events queued between the socket reader and the workers"`
	// ExecPrefetch runs the exec path (see prefetch.go): a second socket
	// that only exec events wake, whose goroutine reads the command line
	// and what else dies with the process the moment the exec arrives.
	// With it the main socket is read every ReadCoalesce (and right after
	// each exec) instead of on every datagram.
	ExecPrefetch bool `json:"exec_prefetch" desc:"read each exec's command line from a second, exec-only socket the moment it arrives"`
	// ReadCoalesce, with ExecPrefetch, is the main socket's read interval:
	// the longest its events wait before being read when no exec comes;
	// 0 waits in the poller for every datagram. Without ExecPrefetch it is
	// the pause after a socket read that found at least
	// ReadCoalesceAfter messages waiting. Under load each read then drains
	// a batch of events instead of one, which divides the reader's and the
	// workers' wake-ups; the receive buffer holds the events meanwhile. A
	// quiet socket is read without pausing. 0 never pauses.
	ReadCoalesce sdk.Duration `json:"read_coalesce" vigil:"min=0s,max=100ms" desc:"main socket read interval (with exec_prefetch), or pause after each busy socket read"`
	// ReadCoalesceAfter is the number of messages a read must find for the
	// reader to pause after it. The default (12, four processes' fork, exec
	// and exit) pauses only under storms; lower values pause at lower
	// rates too, which saves CPU but reads /proc later, so fewer
	// short-lived processes are still there to be read. Only without
	// ExecPrefetch.
	ReadCoalesceAfter int `json:"read_coalesce_after" vigil:"min=1,max=4096" desc:"messages a socket read must find to pause after it"`
	// Workers is the number of enrichment workers.
	Workers int `json:"workers" vigil:"min=1,max=64" desc:"enrichment workers reading /proc"`
	// CmdlineMax caps the bytes of a command line kept.
	CmdlineMax int `json:"cmdline_max" vigil:"min=64,max=131072" desc:"longest command line kept, in bytes"`
	// ProcessTableSize bounds the process table used for lineage.
	ProcessTableSize int `json:"process_table_size" vigil:"min=256,max=1048576" desc:"processes remembered for lineage"`
	// Emit lists the event kinds sent as telemetry: fork, exec, exit, uid,
	// gid, sid, comm, ptrace, coredump. Fork and exit are off by default:
	// they triple the volume of an exec storm and say little on their own.
	Emit []string `json:"emit" desc:"event kinds emitted as telemetry"`
	// ReconnectMin and ReconnectMax bound the backoff between attempts to
	// reopen the socket after an error.
	ReconnectMin sdk.Duration `json:"reconnect_min" vigil:"min=10ms,max=1m" desc:"first delay before reopening the socket"`
	ReconnectMax sdk.Duration `json:"reconnect_max" vigil:"min=100ms,max=10m" desc:"longest delay before reopening the socket"`
	// Detections configures the built-in detections.
	Detections Detections `json:"detections"`
}

// Detections configures the built-in detection rules.
type Detections struct {
	// Disabled lists rule ids that never fire.
	Disabled []string `json:"disabled" desc:"rule ids turned off"`
	// Shells are the base names of shell executables.
	Shells []string `json:"shells" vigil:"min=1" desc:"base names of shells"`
	// Services are the base names of web server and database executables
	// that should never start a shell.
	Services []string `json:"services" desc:"base names of services that must not spawn shells"`
	// WritableDirs are world-writable directories binaries must not run
	// from; each ends with a slash.
	WritableDirs []string `json:"writable_dirs" desc:"world-writable directories, each ending in /"`
	// Allow lists exceptions.
	Allow []AllowRule `json:"allow" desc:"exceptions to the rules"`
}

// AllowRule suppresses a rule for executions matching every pattern it
// sets. Patterns are shell globs (path.Match); * does not cross a slash.
type AllowRule struct {
	// Rule is a rule id, or "*" for every rule.
	Rule string `json:"rule"`
	// Exe matches the executable path.
	Exe string `json:"exe,omitempty"`
	// ParentExe matches the parent's executable path.
	ParentExe string `json:"parent_exe,omitempty"`
	// Cmdline matches the whole command line.
	Cmdline string `json:"cmdline,omitempty"`
}

// DefaultConfig returns procmon's defaults.
func DefaultConfig() *Config {
	return &Config{
		ReceiveBuffer:     8 << 20,
		QueueSize:         16384,
		ExecPrefetch:      true,
		ReadCoalesce:      sdk.Duration(10e6),
		ReadCoalesceAfter: 12,
		Workers:           2,
		CmdlineMax:        4096,
		ProcessTableSize:  16384,
		Emit:              []string{"exec", "uid", "gid", "sid", "comm", "ptrace", "coredump"},
		ReconnectMin:      sdk.Duration(100e6),
		ReconnectMax:      sdk.Duration(30e9),
		Detections: Detections{
			Disabled: []string{},
			Shells:   []string{"sh", "bash", "dash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "ash", "busybox"},
			Services: []string{"nginx", "apache2", "httpd", "lighttpd", "caddy", "php-fpm", "php-cgi", "uwsgi", "gunicorn",
				"tomcat", "jetty", "mysqld", "mariadbd", "postgres", "redis-server", "mongod", "memcached", "elasticsearch"},
			WritableDirs: []string{"/tmp/", "/dev/shm/", "/var/tmp/"},
			Allow:        []AllowRule{},
		},
	}
}

// Validate checks what the vigil tags cannot. It is pure.
func (c *Config) Validate() error {
	var errs []error
	for i, k := range c.Emit {
		if _, ok := cnproc.ParseWhat(k); !ok {
			errs = append(errs, fmt.Errorf("procmon.emit[%d] must be one of fork, exec, exit, uid, gid, sid, comm, ptrace, coredump (got %q)", i, k))
		}
	}
	if c.ReconnectMax < c.ReconnectMin {
		errs = append(errs, fmt.Errorf("procmon.reconnect_max must be at least procmon.reconnect_min (%s) (got %s)", c.ReconnectMin.D(), c.ReconnectMax.D()))
	}
	d := &c.Detections
	for i, id := range d.Disabled {
		if !knownRule(id) {
			errs = append(errs, fmt.Errorf("procmon.detections.disabled[%d] must be one of %s (got %q)", i, strings.Join(RuleIDs(), ", "), id))
		}
	}
	for i, s := range d.Shells {
		if s == "" || strings.Contains(s, "/") {
			errs = append(errs, fmt.Errorf("procmon.detections.shells[%d] must be a base name without a slash (got %q)", i, s))
		}
	}
	for i, s := range d.Services {
		if s == "" || strings.Contains(s, "/") {
			errs = append(errs, fmt.Errorf("procmon.detections.services[%d] must be a base name without a slash (got %q)", i, s))
		}
	}
	for i, dir := range d.WritableDirs {
		if !strings.HasPrefix(dir, "/") || !strings.HasSuffix(dir, "/") {
			errs = append(errs, fmt.Errorf("procmon.detections.writable_dirs[%d] must be an absolute path ending in / (got %q)", i, dir))
		}
	}
	for i, a := range d.Allow {
		key := fmt.Sprintf("procmon.detections.allow[%d]", i)
		if a.Rule != "*" && !knownRule(a.Rule) {
			errs = append(errs, fmt.Errorf("%s.rule must be * or one of %s (got %q)", key, strings.Join(RuleIDs(), ", "), a.Rule))
		}
		if a.Exe == "" && a.ParentExe == "" && a.Cmdline == "" {
			errs = append(errs, fmt.Errorf("%s must set at least one of exe, parent_exe, cmdline (got none)", key))
		}
		for _, p := range []struct{ name, pat string }{{"exe", a.Exe}, {"parent_exe", a.ParentExe}, {"cmdline", a.Cmdline}} {
			if _, err := path.Match(p.pat, ""); err != nil {
				errs = append(errs, fmt.Errorf("%s.%s must be a valid glob pattern (got %q)", key, p.name, p.pat))
			}
		}
	}
	return errors.Join(errs...)
}

// emitMask returns the event kinds to emit as a bit set.
func (c *Config) emitMask() cnproc.What {
	var m cnproc.What
	for _, k := range c.Emit {
		w, _ := cnproc.ParseWhat(k)
		m |= w
	}
	return m
}

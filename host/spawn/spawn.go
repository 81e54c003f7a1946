// Package spawn starts plugin processes from one OS thread that lives as long
// as the host.
//
// Linux delivers a child's parent-death signal (PR_SET_PDEATHSIG, set through
// SysProcAttr.Pdeathsig) when the *thread* that forked it exits, not the
// process. Go may retire the thread a goroutine ran on, so a plugin started
// from an ordinary goroutine could be killed at a random moment, or survive a
// killed host. Starting every plugin from a goroutine locked to its thread
// for the life of the host ties the signal to the host's lifetime, and gives
// cgroup v1 a place to apply a plugin's cgroup before it runs: the thread
// joins the cgroup, forks, and leaves it again.
package spawn

import (
	"errors"
	"runtime"
	"sync"
)

// ErrClosed is returned by Do after Close.
var ErrClosed = errors.New("spawn: spawner closed")

// Spawner runs functions on its one locked OS thread, one at a time.
type Spawner struct {
	reqs chan request
	done chan struct{}
	once sync.Once
}

type request struct {
	fn  func() error
	err chan error
}

// New starts a spawner thread.
func New() *Spawner {
	s := &Spawner{reqs: make(chan request), done: make(chan struct{})}
	go s.loop()
	return s
}

func (s *Spawner) loop() {
	// Locked for good: the goroutine never unlocks, so the thread is never
	// handed to another goroutine and, should the goroutine ever exit, Go
	// destroys the thread rather than reuse it.
	runtime.LockOSThread()
	for {
		select {
		case r := <-s.reqs:
			r.err <- r.fn()
		case <-s.done:
			return
		}
	}
}

// Do runs fn on the spawner thread and returns its error. Everything that
// forks a plugin (exec.Cmd.Start, go-plugin's Client.Start) must run inside
// Do.
func (s *Spawner) Do(fn func() error) error {
	r := request{fn: fn, err: make(chan error, 1)}
	select {
	case s.reqs <- r:
		return <-r.err
	case <-s.done:
		return ErrClosed
	}
}

// Close stops the spawner. Call it only after every plugin it started has
// exited: the locked thread exits with its goroutine, and the kernel then
// sends the parent-death signal to any plugin still running.
func (s *Spawner) Close() {
	s.once.Do(func() { close(s.done) })
}

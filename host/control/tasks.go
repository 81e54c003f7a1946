package control

import (
	"fmt"
	"hash/fnv"
	"time"

	"github.com/vigil-hids/vigil/api"
)

// maxTaskResults bounds the task results kept in the registration value.
const maxTaskResults = 16

// SpreadDelay is the moment within spread at which host runs task id: a
// hash of both, so one host's tasks do not all fire together and a
// fleet-wide task reaches the hosts evenly over the window.
func SpreadDelay(host, id string, spread time.Duration) time.Duration {
	if spread <= 0 {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(host))
	h.Write([]byte{0})
	h.Write([]byte(id))
	return time.Duration(h.Sum64() % uint64(spread))
}

// markDoneLocked remembers a task ID, forgetting the oldest beyond
// maxDoneTasks. Callers hold mu (or own l exclusively).
func (l *Loop) markDoneLocked(id string) {
	if l.doneSet[id] {
		return
	}
	l.doneSet[id] = true
	l.done = append(l.done, id)
	if len(l.done) > maxDoneTasks {
		delete(l.doneSet, l.done[0])
		l.done = append([]string(nil), l.done[1:]...)
	}
}

// scheduleTasks starts a timer for every task of ds not run and not yet
// scheduled.
func (l *Loop) scheduleTasks(ds api.DesiredState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, t := range ds.Tasks {
		if t.ID == "" || l.doneSet[t.ID] || l.scheduled[t.ID] {
			continue
		}
		l.scheduled[t.ID] = true
		l.wg.Add(1)
		go l.runTask(t)
	}
}

// runTask waits the task's spread delay, then runs it once, unless it left
// the desired state meanwhile or the host is stopped (it is scheduled again
// when the stop is lifted). The ID is recorded as done on disk before the
// task runs: at most once, even across a crash.
func (l *Loop) runTask(t api.Task) {
	defer l.wg.Done()
	defer l.catchPanic()
	delay := SpreadDelay(l.cfg.Host, t.ID, time.Duration(t.Spread))
	if l.clock.Sleep(l.ctx, delay) != nil {
		return
	}
	l.mu.Lock()
	still := false
	for _, c := range l.merged.Tasks {
		if c.ID == t.ID {
			still, t = true, c
			break
		}
	}
	if !still || isStopped(l.merged) {
		delete(l.scheduled, t.ID)
		l.mu.Unlock()
		return
	}
	l.markDoneLocked(t.ID)
	l.mu.Unlock()
	if err := l.saveDone(); err != nil {
		l.log.Error("recording task as done; not running it", "task", t.ID, "err", err)
		l.recordTask(t.ID, fmt.Errorf("not run: %w", err))
		return
	}

	var err error
	if r, ok := l.applier.(TaskRunner); ok {
		l.log.Info("running task", "task", t.ID, "plugin", t.Plugin, "name", t.Name)
		err = r.RunTask(l.ctx, t)
	} else {
		err = ErrNoTaskRunner
	}
	l.recordTask(t.ID, err)
}

func (l *Loop) recordTask(id string, err error) {
	res := api.TaskResult{ID: id, At: l.clock.Now().UTC()}
	if err != nil {
		res.Error = err.Error()
	}
	l.mu.Lock()
	delete(l.scheduled, id)
	l.results = append(l.results, res)
	if len(l.results) > maxTaskResults {
		l.results = append([]api.TaskResult(nil), l.results[len(l.results)-maxTaskResults:]...)
	}
	l.mu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// saveDone writes the done list as it is now; saves are serialised so an
// older list never overwrites a newer one.
func (l *Loop) saveDone() error {
	l.saveMu.Lock()
	defer l.saveMu.Unlock()
	l.mu.Lock()
	done := append([]string(nil), l.done...)
	l.mu.Unlock()
	return saveDone(l.cfg.StateDir, done)
}

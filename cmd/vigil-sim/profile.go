package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	httppprof "net/http/pprof"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"time"
)

// scenarioProfiles are CPU profiles of one scenario, all over the same
// window starting at the fleet write: the simulator's own (runtime/pprof)
// and each running member's (/debug/pprof/profile on its client URL; the
// members run with --enable-pprof). Files go to -profile-dir as
// NN-scenario-{sim,m0,m1,...}.pprof.
type scenarioProfiles struct {
	wg  sync.WaitGroup
	err []error
	mu  sync.Mutex
}

// startProfiles starts the profiles of scenario name, or returns nil
// without -profile-dir.
func (s *Sim) startProfiles(name string) *scenarioProfiles {
	dir := s.opts.ProfileDir
	if dir == "" {
		return nil
	}
	s.profiled++
	base := filepath.Join(dir, fmt.Sprintf("%02d-%s", s.profiled, name))
	secs := max(1, int(s.opts.ProfileWindow/time.Second))
	p := &scenarioProfiles{}
	fail := func(err error) {
		p.mu.Lock()
		p.err = append(p.err, err)
		p.mu.Unlock()
	}
	if f, err := os.Create(base + "-sim.pprof"); err != nil {
		fail(err)
	} else if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		fail(fmt.Errorf("simulator profile: %w", err))
	} else {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			time.Sleep(time.Duration(secs) * time.Second)
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	if s.cell == nil || s.cell.bin != "" {
		return p
	}
	for _, m := range s.cell.members {
		if m.cmd == nil {
			continue
		}
		url := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", m.clientURL, secs)
		path := base + "-" + m.name + ".pprof"
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if err := fetchTo(url, path, time.Duration(secs+30)*time.Second); err != nil {
				fail(fmt.Errorf("profile of %s: %w", path, err))
			}
		}()
	}
	return p
}

func fetchTo(url, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// wait waits for every profile of the scenario and describes failures.
func (p *scenarioProfiles) wait() string {
	if p == nil {
		return ""
	}
	p.wg.Wait()
	if len(p.err) == 0 {
		return ""
	}
	return fmt.Sprintf("; profiles: %v", p.err)
}

// servePprof serves net/http/pprof's handlers on addr, which must be a
// loopback address: the profiles show the simulator's internals to
// whoever can connect.
func servePprof(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-pprof %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("-pprof %q: not a loopback address", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("-pprof: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", httppprof.Index)
	mux.HandleFunc("/debug/pprof/profile", httppprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", httppprof.Trace)
	go func() { _ = http.Serve(ln, mux) }()
	return nil
}

package store

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Member is one etcd member as the cluster lists it.
type Member struct {
	ID         string   `json:"id"`
	Name       string   `json:"name"`
	ClientURLs []string `json:"client_urls"`
	PeerURLs   []string `json:"peer_urls"`
	Learner    bool     `json:"learner,omitempty"`
}

// Endpoint is the status one client endpoint reports.
type Endpoint struct {
	Endpoint   string   `json:"endpoint"`
	MemberID   string   `json:"member_id,omitempty"`
	Version    string   `json:"version,omitempty"`
	DBSize     int64    `json:"db_size,omitempty"`
	DBSizeUsed int64    `json:"db_size_in_use,omitempty"`
	Leader     string   `json:"leader,omitempty"`
	RaftTerm   uint64   `json:"raft_term,omitempty"`
	Revision   int64    `json:"revision,omitempty"`
	Errors     []string `json:"errors,omitempty"`
	Err        string   `json:"error,omitempty"`
}

// ClusterStatus is the etcd cluster as the server sees it.
type ClusterStatus struct {
	Members   []Member   `json:"members"`
	Endpoints []Endpoint `json:"endpoints"`
	// Leader is the leader member's name ("" if none is known).
	Leader string `json:"leader"`
	// DBSize is the largest backend size reported by an endpoint.
	DBSize int64    `json:"db_size"`
	Alarms []string `json:"alarms"`
	// AlarmsError says why alarms could not be read (older etcd releases
	// let only root list them once authentication is on; 3.7.3 lets any
	// authenticated user).
	AlarmsError string `json:"alarms_error,omitempty"`
	Healthy     bool   `json:"healthy"`
}

// EndpointTimeout bounds each endpoint's status request.
const EndpointTimeout = 3 * time.Second

// Status asks every endpoint for its status and the cluster for its
// members and alarms. Unreachable endpoints are reported, not fatal.
func (s *Store) Status(ctx context.Context) (ClusterStatus, error) {
	st := ClusterStatus{Alarms: []string{}}
	mctx, mcancel := context.WithTimeout(ctx, EndpointTimeout)
	ml, err := s.cli.MemberList(mctx)
	mcancel()
	if err != nil {
		return st, fmt.Errorf("listing etcd members: %w", err)
	}
	names := map[uint64]string{}
	for _, m := range ml.Members {
		names[m.ID] = m.Name
		st.Members = append(st.Members, Member{ID: fmt.Sprintf("%x", m.ID), Name: m.Name,
			ClientURLs: m.ClientURLs, PeerURLs: m.PeerURLs, Learner: m.IsLearner})
	}
	// Each endpoint is asked in parallel with its own bound: a dead member
	// must not use up the caller's deadline for the living ones.
	eps := s.cli.Endpoints()
	st.Endpoints = make([]Endpoint, len(eps))
	var wg sync.WaitGroup
	for i, ep := range eps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ectx, cancel := context.WithTimeout(ctx, EndpointTimeout)
			defer cancel()
			e := Endpoint{Endpoint: ep}
			if r, err := s.cli.Status(ectx, ep); err != nil {
				e.Err = err.Error()
			} else {
				e.MemberID = fmt.Sprintf("%x", r.Header.MemberId)
				e.Version = r.Version
				e.DBSize = r.DbSize
				e.DBSizeUsed = r.DbSizeInUse
				e.Leader = fmt.Sprintf("%x", r.Leader)
				e.RaftTerm = r.RaftTerm
				e.Revision = r.Header.Revision
				e.Errors = r.Errors
			}
			st.Endpoints[i] = e
		}()
	}
	wg.Wait()
	ids := map[string]uint64{}
	for id := range names {
		ids[fmt.Sprintf("%x", id)] = id
	}
	for _, e := range st.Endpoints {
		if e.Err != "" {
			continue
		}
		if id := ids[e.Leader]; id != 0 {
			st.Leader = names[id]
			st.Healthy = true
		}
		st.DBSize = max(st.DBSize, e.DBSize)
	}
	actx, cancel := context.WithTimeout(ctx, EndpointTimeout)
	defer cancel()
	al, err := s.cli.AlarmList(actx)
	if err != nil {
		st.AlarmsError = err.Error()
	} else {
		for _, a := range al.Alarms {
			st.Alarms = append(st.Alarms, fmt.Sprintf("%x: %s", a.MemberID, a.Alarm))
		}
	}
	if len(st.Alarms) > 0 {
		st.Healthy = false
	}
	return st, nil
}

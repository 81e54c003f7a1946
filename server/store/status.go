package store

import (
	"context"
	"fmt"
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
	// AlarmsError says why alarms could not be read (etcd lets only
	// root list them once authentication is on).
	AlarmsError string `json:"alarms_error,omitempty"`
	Healthy     bool   `json:"healthy"`
}

// Status asks every endpoint for its status and the cluster for its
// members and alarms. Unreachable endpoints are reported, not fatal.
func (s *Store) Status(ctx context.Context) (ClusterStatus, error) {
	st := ClusterStatus{Alarms: []string{}}
	ml, err := s.cli.MemberList(ctx)
	if err != nil {
		return st, fmt.Errorf("listing etcd members: %w", err)
	}
	names := map[uint64]string{}
	for _, m := range ml.Members {
		names[m.ID] = m.Name
		st.Members = append(st.Members, Member{ID: fmt.Sprintf("%x", m.ID), Name: m.Name,
			ClientURLs: m.ClientURLs, PeerURLs: m.PeerURLs, Learner: m.IsLearner})
	}
	for _, ep := range s.cli.Endpoints() {
		e := Endpoint{Endpoint: ep}
		r, err := s.cli.Status(ctx, ep)
		if err != nil {
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
			if r.Leader != 0 {
				st.Leader = names[r.Leader]
				st.Healthy = true
			}
			if r.DbSize > st.DBSize {
				st.DBSize = r.DbSize
			}
		}
		st.Endpoints = append(st.Endpoints, e)
	}
	al, err := s.cli.AlarmList(ctx)
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

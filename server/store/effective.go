package store

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/vigil-hids/vigil/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Layer is one scope document that applies to a host.
type Layer struct {
	Scope    string `json:"scope"`
	Seq      int64  `json:"seq"`
	Revision int64  `json:"revision"`
}

// Effective is the desired state a host derives: fleet ⊕ groups ⊕ host.
type Effective struct {
	Host   string            `json:"host"`
	Labels map[string]string `json:"labels"`
	// Registered says whether the labels came from a registration;
	// otherwise only the fleet and host documents apply.
	Registered bool `json:"registered"`
	// Layers are the documents that exist, in merge order.
	Layers []Layer          `json:"layers"`
	State  api.DesiredState `json:"state"`
	// Revision is the newest layer's revision: the applied.revision the
	// host acknowledges once it applied this state.
	Revision int64 `json:"revision"`
	// Applied is the host's acknowledged revision (0 if unregistered).
	Applied int64 `json:"applied"`
}

// Effective computes a host's desired state as the host does (api.Merge
// over api.HostScopes of its registered labels), reading the registration
// and every layer in one Txn so they are consistent.
func (s *Store) Effective(ctx context.Context, host string) (Effective, error) {
	ks := s.opts.Keyspace
	eff := Effective{Host: host, Layers: []Layer{}}
	resp, err := s.cli.Get(ctx, ks.Agent(host))
	if err != nil {
		return eff, fmt.Errorf("reading registration of %s: %w", host, err)
	}
	rev := resp.Header.Revision
	if len(resp.Kvs) > 0 {
		var r api.Registration
		if err := json.Unmarshal(resp.Kvs[0].Value, &r); err == nil {
			eff.Labels, eff.Registered, eff.Applied = r.Labels, true, r.Applied.Revision
		}
	}
	scopes := api.HostScopes(host, eff.Labels)
	ops := make([]clientv3.Op, len(scopes))
	for i, sc := range scopes {
		ops[i] = clientv3.OpGet(ks.ScopeKey(sc), clientv3.WithRev(rev))
	}
	tx, err := s.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return eff, fmt.Errorf("reading the documents of %s: %w", host, err)
	}
	layers := make([]api.DesiredState, 0, len(scopes))
	for i, r := range tx.Responses {
		kvs := r.GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			continue
		}
		var d api.Document
		if err := json.Unmarshal(kvs[0].Value, &d); err != nil {
			return eff, fmt.Errorf("decoding %s: %w", kvs[0].Key, err)
		}
		layers = append(layers, d.State)
		eff.Layers = append(eff.Layers, Layer{Scope: scopes[i].String(), Seq: d.Seq, Revision: kvs[0].ModRevision})
		eff.Revision = max(eff.Revision, kvs[0].ModRevision)
	}
	eff.State = api.Merge(layers...)
	return eff, nil
}

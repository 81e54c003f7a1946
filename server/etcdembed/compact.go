package etcdembed

import (
	"context"
	"errors"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/server/v3/storage/mvcc"
)

// Compact compacts the member's keyspace at rev (logically, not waiting
// for the backend to free pages) from inside the process, as etcd's own
// auto-compactor does. Over gRPC, with authentication on, etcd lets only
// the root role compact, and vigil-server's etcd user is not root. A
// revision at or below the last compaction returns rpctypes.ErrCompacted,
// one above the current revision rpctypes.ErrFutureRev, as a client's
// Compact does.
func (s *Server) Compact(ctx context.Context, rev int64) error {
	_, err := s.etcd.Server.Compact(ctx, &pb.CompactionRequest{Revision: rev})
	switch {
	case errors.Is(err, mvcc.ErrCompacted):
		return rpctypes.ErrCompacted
	case errors.Is(err, mvcc.ErrFutureRev):
		return rpctypes.ErrFutureRev
	}
	return err
}

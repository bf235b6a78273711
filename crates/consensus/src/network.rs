//! Node-to-node transport.
//!
//! This build runs single-member groups only: the leader never has a peer to call, so
//! every RPC reports the target unreachable with an explicit reason. Openraft only calls
//! these when the membership names other nodes, which `Node::open` never creates. The
//! cluster transport (plain TCP, length-prefixed frames) replaces this module.

use crate::types::{Checkpoint, TypeConfig, Vote};
use openraft::error::{Fatal, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{BasicNode, OptionalSend, Snapshot};
use std::future::Future;

/// Creates clients that cannot reach anyone (see module docs).
#[derive(Debug, Clone, Default)]
pub struct NoPeers;

/// A client for a peer this build cannot reach.
#[derive(Debug, Clone)]
pub struct NoPeerClient {
    target: u64,
}

impl NoPeerClient {
    fn unreachable(&self) -> Unreachable {
        let e = std::io::Error::other(format!(
            "node {} is not reachable: this build has no node-to-node transport (single-node groups only)",
            self.target
        ));
        Unreachable::new(&e)
    }
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeerClient;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Self::Network {
        NoPeerClient { target }
    }
}

impl RaftNetwork<TypeConfig> for NoPeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: Snapshot<TypeConfig>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let _: Option<Checkpoint> = None;
        Err(StreamingError::Unreachable(self.unreachable()))
    }
}

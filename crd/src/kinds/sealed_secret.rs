//! The SealedSecret kind: one secret's data key wrapped to one node's
//! public key — how a node, and only a node that runs a task using the
//! secret, can open it (Swarm's dispatcher hands secrets only to assigned
//! nodes; here the store holds a copy per such node instead).
//!
//! Keys and writers:
//! - `{prefix}/sealedsecrets/<secret>.<node>` ([`SealedSecret::name_for`]):
//!   written and deleted only by the controllers' secrets loop, which holds
//!   the cluster's private key. The node's agent only reads its own copies.
//!
//! A copy holds no ciphertext: the value stays in the Secret; the agent
//! opens it with [`crate::sealing::open_with_wrapped`] and the Secret's
//! store key as associated data, so a copy cannot be used for another secret.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::kind;
use crate::sealing::WrappedKey;

kind!(
    /// A secret's data key sealed to one node.
    SealedSecret, SealedSecretSpec, "sealedsecrets", status: ()
);

/// Written by the secrets controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SealedSecretSpec {
    /// Name of the Secret.
    pub secret: String,
    /// Name of the Node it is sealed to.
    pub node: String,
    /// The Secret's `metadata.generation` (its version) the key belongs to.
    pub secret_generation: i64,
    /// The Secret's data key, wrapped to the node's `status.sealingKey`.
    pub data_key: WrappedKey,
}

impl SealedSecret {
    /// `<secret>.<node>`: the name of `secret`'s copy for `node`.
    pub fn name_for(secret: &str, node: &str) -> String {
        format!("{secret}.{node}")
    }
}

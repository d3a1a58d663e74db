//! Flight SQL: where its commands arrive once [`Command`] has recognised
//! them by their type URL. The server does not speak Flight SQL yet, so
//! each RPC answers `Unimplemented` naming the command, instead of reading
//! it as one of our own messages.
//!
//! [`Command`]: crate::wire::Command

use crate::error::Error;

/// The answer to any Flight SQL command on any RPC, for now.
pub fn unsupported(rpc: &str, command: &str) -> Error {
    Error::Unimplemented(format!(
        "Flight SQL is not supported by this server yet ({command} sent to {rpc}); query with a PixelQuery Query (JSON or pixelquery.v1.Query, see docs/protocol.md)"
    ))
}

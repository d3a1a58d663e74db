//! PixelQuery Flight wire messages (protobuf, v1), generated from
//! `pixelquery/v1/pixelquery.proto` at build time. The `.proto` comments are
//! the wire specification; `docs/protocol.md` gives the equivalent JSON forms.

/// Version 1 of the protocol.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/pixelquery.v1.rs"));
}

/// The JSON forms the server answers with (`docs/protocol.md`).
pub mod json {
    use serde::{Deserialize, Serialize};

    /// `PutResult.app_metadata` of a DoPut: the JSON form of
    /// `v1::PutResultMetadata`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct PutSummary {
        pub scene_id: String,
        pub tiles: Vec<String>,
        pub observations: u64,
        pub bytes: u64,
        pub elapsed_ms: u64,
        pub duplicate: bool,
    }
}

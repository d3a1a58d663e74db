//! PixelQuery Flight wire messages (protobuf, v1), generated from
//! `pixelquery/v1/pixelquery.proto` at build time. The `.proto` comments are
//! the wire specification; DESIGN §4a gives the equivalent JSON forms.

/// Version 1 of the protocol.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/pixelquery.v1.rs"));
}

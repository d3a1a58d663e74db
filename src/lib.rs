//! PixelQuery Flight: satellite rasters in over Arrow Flight `DoPut`,
//! reprojected onto a fixed tile grid, stored as per-tile chunk files, and
//! served back with `DoGet`.
//!
//! - [`cli`], [`config`]: command line and validated settings
//! - [`auth`]: access file, bearer tokens, roles, Handshake
//! - [`server`]: `run(listener, state, shutdown)`
//! - [`flight`]: the FlightService, thin; DoAction in `flight::actions`
//! - [`wire`]: protobuf/JSON requests into validated domain requests
//! - [`cog`]: GeoTIFF/COG files into scenes (CLI ingest, ingest_path)
//! - [`collection`]: collections, bands, data types, built-in profiles
//! - [`grid`]: the tile grid, pure math
//! - [`ingest`]: DoPut stream -> warp -> append
//! - [`warp`]: CRS transforms and resampling kernels
//! - [`storage`]: chunk files, the catalog, storage paths
//! - [`pool`]: fixed threads for warp jobs and syncs
//! - [`query`]: query -> chunks -> record batches, point series
//! - [`error`]: the crate error and its one mapping to `tonic::Status`

pub mod auth;
pub mod cli;
pub mod cog;
pub mod collection;
pub mod config;
pub mod error;
pub mod flight;
pub mod grid;
pub mod ingest;
pub mod pool;
pub mod query;
pub mod server;
pub mod storage;
pub mod warp;
pub mod wire;

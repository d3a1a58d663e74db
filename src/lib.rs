//! PixelQuery Flight: satellite rasters in over Arrow Flight `DoPut`,
//! reprojected onto a fixed tile grid, stored as per-tile chunk files, and
//! served back with `DoGet`.
//!
//!
//! From the top floor down; a module imports only modules below it.
//!
//! - [`cli`], [`config`]: command line and validated settings
//! - [`server`]: `run(listener, state, shutdown)`
//! - [`flight`]: the FlightService, thin: decode -> call -> encode
//! - [`actions`]: DoAction, one file per action
//! - [`state`]: what every handler shares
//! - [`auth`]: access file, bearer tokens, roles, Handshake
//! - [`cog`]: GeoTIFF/COG files into scenes (CLI ingest, ingest_path)
//! - [`ingest`]: DoPut stream -> warp -> append
//! - [`sql`]: SQL over the catalog (DataFusion), behind Flight SQL
//! - [`query`]: query -> chunks -> record batches, point series, load windows
//! - [`compute`]: per-observation steps: QA masks, scale/offset, band math
//! - [`wire`]: commands and protobuf/JSON requests into validated requests
//! - [`warp`]: resampling kernels
//! - [`storage`]: chunk files, the catalog, storage paths
//! - [`collection`], [`grid`], [`crs`], [`sample`], [`counters`],
//!   [`pool`], [`error`]: the ground floor (data model, grid math, CRS
//!   transforms, pixel types, health counters, threads, the crate error)

pub mod actions;
pub mod auth;
pub mod cli;
pub mod cog;
pub mod collection;
pub mod compute;
pub mod config;
pub mod counters;
pub mod crs;
pub mod error;
pub mod flight;
pub mod grid;
pub mod ingest;
pub mod pool;
pub mod query;
pub mod sample;
pub mod server;
pub mod sql;
pub mod state;
pub mod storage;
pub mod warp;
pub mod wire;

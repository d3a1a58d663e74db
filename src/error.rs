//! The crate error and the one conversion into `tonic::Status`.
//!
//! Client mistakes carry the field and the offending value; server faults
//! keep their source chain. `Status` appears only in `into_status`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The warehouse directory, which errors and logs never show: a path below
/// it is shown from the collection down (`<warehouse>/s2/tiles/...`, which
/// names the collection, tile, month and band), any other as its file name.
static WAREHOUSE_ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Sets the directory [`shown`] hides (the first warehouse opened).
pub fn hide_warehouse_root(root: &Path) {
    let _ = WAREHOUSE_ROOT.set(root.to_path_buf());
}

/// `path` as errors show it: without the server's own directories.
pub fn shown(path: &Path) -> String {
    if let Some(rel) = WAREHOUSE_ROOT.get().and_then(|root| path.strip_prefix(root).ok()) {
        return format!("<warehouse>/{}", rel.display());
    }
    path.file_name().map_or_else(|| "<file>".into(), |n| n.to_string_lossy().to_string())
}

/// Free bytes of the warehouse's file system, where known.
fn warehouse_free_bytes() -> Option<u64> {
    WAREHOUSE_ROOT.get().and_then(|root| crate::storage::local::free_bytes(root))
}

/// Longest message sent to a client (values are cut so one bad field cannot
/// echo megabytes back).
const MAX_MESSAGE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field has a bad value.
    #[error("invalid {field} = {value}: {reason}")]
    Invalid { field: String, value: String, reason: String },
    /// The request refers to something that does not exist.
    #[error("{what} not found")]
    NotFound { what: String },
    /// Creating something that already exists.
    #[error("{what} already exists{detail}")]
    AlreadyExists { what: String, detail: String },
    /// A filesystem operation failed.
    #[error("io error on {}: {source}", shown(path))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Encoding or decoding Arrow data failed on our side.
    #[error("arrow error while {context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: arrow_schema::ArrowError,
    },
    /// A GDAL/PROJ call failed for a reason that is not the client's input.
    #[error("gdal error while {context}: {source}")]
    Gdal {
        context: String,
        #[source]
        source: gdal::errors::GdalError,
    },
    /// Stored bytes fail their checksum (bit rot, a file changed behind
    /// the server's back): what is damaged, never a wrong value.
    #[error("data loss: {0}")]
    DataLoss(String),
    /// A stored file does not look like what we wrote.
    #[error("corrupt {}: {reason}", shown(path))]
    Corrupt { path: PathBuf, reason: String },
    /// No valid credentials.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Valid credentials whose role does not allow the call.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A server limit (concurrency, result size) is reached; retry later or
    /// ask for less.
    #[error("{0}")]
    Exhausted(String),
    /// The call ran past the server's request timeout.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A resource another process holds (a warehouse directory).
    #[error("{0}")]
    InUse(String),
    /// A request the server recognises but does not serve (yet).
    #[error("{0}")]
    Unimplemented(String),
    /// The object store behind the warehouse failed or cannot be reached;
    /// nothing of the call was committed.
    #[error("{0}")]
    Unavailable(String),
    /// What the call relied on changed meanwhile (a ticket planned before
    /// a rewrite): plan again.
    #[error("{0}")]
    Aborted(String),
    /// A background task died.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A bad client value; `value` is shown with Debug quoting and cut to 200 chars.
    pub fn invalid(field: &str, value: impl std::fmt::Debug, reason: &str) -> Self {
        let mut v = format!("{value:?}");
        if v.len() > 200 {
            let cut = (0..=200).rev().find(|i| v.is_char_boundary(*i)).unwrap_or(0);
            v.truncate(cut);
            v.push('…');
        }
        Error::Invalid { field: field.to_string(), value: v, reason: reason.to_string() }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }

    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub fn arrow(context: impl Into<String>) -> impl FnOnce(arrow_schema::ArrowError) -> Self {
        let context = context.into();
        move |source| Error::Arrow { context, source }
    }

    pub fn gdal(context: impl Into<String>) -> impl FnOnce(gdal::errors::GdalError) -> Self {
        let context = context.into();
        move |source| Error::Gdal { context, source }
    }

    /// The one mapping to gRPC. Client mistakes are logged at info, server
    /// faults at warn with their source chain.
    pub fn into_status(self) -> tonic::Status {
        use tonic::Code;
        let code = match &self {
            Error::Invalid { .. } => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Exhausted(_) => Code::ResourceExhausted,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Unavailable(_) => Code::Unavailable,
            Error::InUse(_) => Code::FailedPrecondition,
            Error::Aborted(_) => Code::Aborted,
            Error::Io { .. } => Code::Internal,
            Error::Arrow { .. } => Code::Internal,
            Error::Gdal { .. } => Code::Internal,
            Error::Corrupt { .. } => Code::Internal,
            Error::DataLoss(_) => Code::DataLoss,
            Error::Internal(_) => Code::Internal,
        };
        if let Error::Io { path, source } = &self {
            if source.raw_os_error() == Some(libc::ENOSPC) || source.kind() == std::io::ErrorKind::StorageFull {
                let free = warehouse_free_bytes().map_or_else(|| "?".into(), |b| (b >> 20).to_string());
                let msg = format!(
                    "the warehouse's file system is full ({free} MiB free) while writing {}: nothing of this request was kept; delete scenes (DoAction delete) to free space",
                    shown(path)
                );
                tracing::warn!(error = %msg, "request failed");
                return tonic::Status::new(Code::ResourceExhausted, msg);
            }
        }
        let mut msg = self.to_string();
        if matches!(code, Code::Internal | Code::DataLoss) {
            tracing::warn!(error = %msg, "request failed");
        } else if code == Code::Unauthenticated {
            // A password-guessing or token-spraying flood must not flood
            // the log too.
            match auth_log_room() {
                Some(0) => tracing::info!(error = %msg, "request rejected"),
                Some(dropped) => tracing::info!(error = %msg, dropped, "request rejected (earlier rejections not logged)"),
                None => {}
            }
        } else {
            tracing::info!(error = %msg, "request rejected");
        }
        if msg.len() > MAX_MESSAGE {
            let cut = (0..=MAX_MESSAGE).rev().find(|i| msg.is_char_boundary(*i)).unwrap_or(0);
            msg.truncate(cut);
        }
        tonic::Status::new(code, msg)
    }
}

/// Authentication failures logged per [`AUTH_LOG_WINDOW`] at most.
const AUTH_LOG_LINES: u32 = 20;
const AUTH_LOG_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// (window start, lines logged in it, failures not logged since).
static AUTH_LOG: std::sync::Mutex<(Option<std::time::Instant>, u32, u64)> = std::sync::Mutex::new((None, 0, 0));

/// Whether an authentication failure may be logged now: `Some(n)` with the
/// failures left out before it, `None` if this one is left out.
fn auth_log_room() -> Option<u64> {
    let mut log = AUTH_LOG.lock().unwrap_or_else(|p| p.into_inner());
    let now = std::time::Instant::now();
    if log.0.is_none_or(|start| now.duration_since(start) >= AUTH_LOG_WINDOW) {
        (log.0, log.1) = (Some(now), 0);
    }
    if log.1 >= AUTH_LOG_LINES {
        log.2 += 1;
        return None;
    }
    log.1 += 1;
    Some(std::mem::take(&mut log.2))
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        e.into_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authentication_failures_are_logged_at_a_bounded_rate() {
        let logged = (0..1000).filter(|_| auth_log_room().is_some()).count();
        assert!(logged as u32 <= AUTH_LOG_LINES, "{logged} lines for 1000 failures in one window");
    }
}

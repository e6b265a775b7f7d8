//! meshlens' policy engine, apart from any transport: rate limit configs read as
//! envoyproxy/ratelimit reads them (`ratelimit`), authorization and quota rules (`authz`), the
//! quota algorithms and their backends (`quota`: memory or Redis), and `limit`, the vocabulary
//! they share. The gRPC services that Envoy calls live in `meshlens-collector` and convert at the
//! boundary.
#![forbid(unsafe_code)]

pub mod authz;
pub mod credentials;
pub mod engine;
pub mod limit;
pub mod quota;
pub mod ratelimit;
pub mod testing;
pub mod yaml_at;

use std::fmt;
use std::path::{Path, PathBuf};

pub use engine::{Backend, FailureMode, PolicyEngine, PolicySettings, ReloadOutcome};
pub use limit::{Algorithm, Rate, Unit, Usage};

/// Why a config file was refused: the file, and the reason (with its line where known).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub reason: String,
}

impl ConfigError {
    pub fn new(file: &Path, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.reason)
    }
}

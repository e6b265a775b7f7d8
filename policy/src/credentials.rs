//! Bearer tokens read from a file, one per line: `TOKEN [FIELD]` (a role for the web, a tenant
//! for ingest), `#` comments and blank lines ignored. The file is re-read when it changes; a bad
//! new file is refused and the previous tokens stay.
//!
//! Tokens are kept as SHA-256 digests and a presented token is compared with every one in
//! constant time, so neither the memory nor the timing of a check tells a token. No error or
//! log line ever includes a token: a bad line is named by its number.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use subtle::ConstantTimeEq;

/// A token's SHA-256 digest: what a session remembers instead of the token.
pub type Digest = [u8; 32];

pub fn digest(token: &str) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// 32 random bytes from the operating system, as 64 hex digits (session ids).
pub fn random_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a line's second field into what a token stands for.
pub type ParseField<V> = fn(Option<&str>) -> Result<V, String>;

pub struct TokenFile<V> {
    path: PathBuf,
    parse: ParseField<V>,
    tokens: ArcSwap<Vec<(Digest, V)>>,
    stamp: Mutex<Option<(u64, SystemTime)>>,
}

impl<V: Clone> TokenFile<V> {
    /// Reads `path`; an unreadable file or a bad line is an error naming the file and line.
    pub fn load(path: &Path, parse: ParseField<V>) -> Result<Arc<Self>, String> {
        let stamp = stamp(path);
        let tokens = read(path, parse)?;
        Ok(Arc::new(TokenFile {
            path: path.to_path_buf(),
            parse,
            tokens: ArcSwap::from_pointee(tokens),
            stamp: Mutex::new(stamp),
        }))
    }

    /// What `token` stands for, with its digest; `None` if it is not in the file.
    pub fn check(&self, token: &str) -> Option<(Digest, V)> {
        let d = digest(token);
        self.check_digest(&d).map(|v| (d, v))
    }

    /// What the token with digest `d` stands for now (a session checks that its token is still
    /// in the file, and takes its current role).
    pub fn check_digest(&self, d: &Digest) -> Option<V> {
        let tokens = self.tokens.load();
        let mut found = None;
        // Every entry is compared, whatever matched before.
        for (candidate, value) in tokens.iter() {
            if bool::from(candidate.ct_eq(d)) {
                found = Some(value.clone());
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.tokens.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file if its size or time changed: `Ok(true)` when new tokens were taken, an
    /// error (and the old tokens kept) when the new file is bad.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = stamp(&self.path);
        let mut seen = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == now {
            return Ok(false);
        }
        *seen = now;
        let tokens = read(&self.path, self.parse)?;
        self.tokens.store(Arc::new(tokens));
        Ok(true)
    }
}

fn stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

fn read<V>(path: &Path, parse: ParseField<V>) -> Result<Vec<(Digest, V)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the tokens file {}: {e}", path.display()))?;
    let mut out: Vec<(Digest, V)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let token = fields.next().unwrap_or_default();
        let field = fields.next();
        let at = || format!("{}:{}", path.display(), i + 1);
        if fields.next().is_some() {
            return Err(format!("{}: more than two fields", at()));
        }
        if token.len() < 16 {
            return Err(format!(
                "{}: the token is shorter than 16 characters (use a random one, such as `openssl rand -hex 32`)",
                at()
            ));
        }
        let value = parse(field).map_err(|e| format!("{}: {e}", at()))?;
        let d = digest(token);
        if out.iter().any(|(seen, _)| *seen == d) {
            return Err(format!("{}: a token listed twice", at()));
        }
        out.push((d, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(f: Option<&str>) -> Result<Option<String>, String> {
        Ok(f.map(str::to_string))
    }

    #[test]
    fn tokens_are_found_reloaded_and_never_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "# ingest tokens\n0123456789abcdef0123 shop\n\nfedcba9876543210fedc\n",
        )
        .unwrap();
        let file = TokenFile::load(&path, tenant).unwrap();
        assert_eq!(file.len(), 2);
        let (d, t) = file.check("0123456789abcdef0123").unwrap();
        assert_eq!(t.as_deref(), Some("shop"));
        assert_eq!(file.check_digest(&d), Some(Some("shop".into())));
        assert_eq!(file.check("fedcba9876543210fedc").unwrap().1, None);
        assert!(file.check("0123456789abcdef012").is_none(), "a prefix");
        assert!(file.check("").is_none());

        // A bad new file is refused without naming the token, and the old tokens stay.
        std::fs::write(&path, "secret-token-value-1234 a b\n").unwrap();
        let e = file.reload_if_changed().unwrap_err();
        assert!(e.contains(":1: more than two fields"), "{e}");
        assert!(!e.contains("secret-token-value"), "{e}");
        assert!(file.check("0123456789abcdef0123").is_some());
        std::fs::write(&path, "short\n").unwrap();
        let e = file.reload_if_changed().unwrap_err();
        assert!(
            e.contains("shorter than 16") && !e.contains("short\n"),
            "{e}"
        );

        // A good one replaces them: a removed token no longer checks, by digest either.
        std::fs::write(&path, "another-token-0000000\n").unwrap();
        assert_eq!(file.reload_if_changed(), Ok(true));
        assert!(file.check("0123456789abcdef0123").is_none());
        assert_eq!(file.check_digest(&d), None);
        assert!(file.check("another-token-0000000").is_some());
        assert_eq!(file.reload_if_changed(), Ok(false), "unchanged");
    }

    #[test]
    fn session_ids_are_random() {
        let (a, b) = (random_id(), random_id());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}

//! The shared secret a server may ask of every connection (connection admission).

/// Largest secret.
pub const MAX_SECRET: usize = 64;

/// A shared secret of 1 to [`MAX_SECRET`] bytes. Its `Debug` never shows the bytes, so it can
/// sit in configurations that are logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

/// Why bytes cannot be a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a secret must be 1 to {MAX_SECRET} bytes, not {0}")]
pub struct BadSecretLength(pub usize);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Result<Secret, BadSecretLength> {
        if bytes.is_empty() || bytes.len() > MAX_SECRET {
            return Err(BadSecretLength(bytes.len()));
        }
        Ok(Secret(bytes))
    }

    /// Reads a secret from a file (a trailing newline is not part of it).
    pub fn from_file(path: &std::path::Path) -> std::io::Result<Secret> {
        let mut bytes = std::fs::read(path)?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        Secret::new(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether `presented` is this secret, compared in time that does not depend on where they
    /// differ (so that it cannot be guessed a byte at a time from response times).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let mut diff = u8::from(presented.len() != self.0.len());
        for (i, w) in self.0.iter().enumerate() {
            diff |= w ^ presented.get(i).copied().unwrap_or(!w);
        }
        diff == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_exactly_and_never_print() {
        let s = Secret::new(b"abc".to_vec()).unwrap();
        assert!(s.matches(b"abc"));
        for other in [&b""[..], b"ab", b"abd", b"abcd", b"xbc"] {
            assert!(!s.matches(other), "{other:?}");
        }
        assert_eq!(format!("{s:?}"), "Secret(..)");
        assert_eq!(Secret::new(Vec::new()), Err(BadSecretLength(0)));
        assert_eq!(Secret::new(vec![0; MAX_SECRET + 1]), Err(BadSecretLength(MAX_SECRET + 1)));
    }

    #[test]
    fn a_secret_file_may_end_with_a_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, b"hunter2\n").unwrap();
        assert!(Secret::from_file(&p).unwrap().matches(b"hunter2"));
        std::fs::write(&p, b"\n").unwrap();
        assert_eq!(Secret::from_file(&p).unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    }
}

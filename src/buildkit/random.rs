//! Random ids and bytes the client makes: session ids, export references, and the suffixes
//! of temporary names. A leaf of `buildkit`: it imports nothing of the crate.

use std::io::Read;

use sha2::{Digest, Sha256};

/// A random 25-character base-36 id, like buildkit's session ids.
pub(crate) fn random_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let bytes = random_bytes::<25>();
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// Random bytes from the OS; falls back to a hash of the time and process id, which is
/// unique enough for ids, when `/dev/urandom` is unavailable.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .is_ok()
    {
        return out;
    }
    let seed = format!(
        "{:?}{}{:?}",
        std::time::SystemTime::now(),
        std::process::id(),
        std::thread::current().id()
    );
    let mut digest = Sha256::digest(seed.as_bytes()).to_vec();
    while digest.len() < N {
        let more = Sha256::digest(&digest).to_vec();
        digest.extend(more);
    }
    out.copy_from_slice(&digest[..N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_25_base36_chars_and_differ() {
        let a = random_id();
        assert_eq!(a.len(), 25);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        assert_ne!(a, random_id());
    }
}

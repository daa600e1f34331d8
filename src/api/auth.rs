//! Bearer tokens of the admin API: hashing, checking in constant time, scopes, minting.
//! Pure apart from the random source of [`mint`]; knows nothing of HTTP or the store.

use std::fmt;

use crate::config::ApiTokenConfig;
use crate::rules::Tenant;

/// What a token may see and change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every tenant's lists and the global lists.
    Global,
    /// Only this tenant's lists.
    Tenant(Tenant),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Tenant(t) => write!(f, "tenant {t}"),
        }
    }
}

/// A token that was presented and matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `name` (or the first 8 hex digits of its hash when it has none).
    pub name: String,
    /// What it may touch.
    pub scope: Scope,
}

#[derive(Debug, Clone)]
struct Known {
    hash: [u8; 32],
    caller: Caller,
}

/// The configured tokens, checked.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    known: Vec<Known>,
}

/// A `[[api.tokens]]` entry that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// `token_sha256` is not 64 hex digits.
    #[error(
        "token {index}: token_sha256 must be 64 hex digits (make one with `callguard api-token`)"
    )]
    BadHash {
        /// 1-based position in the list.
        index: usize,
    },
    /// Neither or both of `tenant` and `scope = "global"`.
    #[error("token {index}: give exactly one of tenant = \"NAME\" and scope = \"global\"")]
    Scope {
        /// 1-based position in the list.
        index: usize,
    },
    /// The tenant name is not valid.
    #[error("token {index}: {source}")]
    Tenant {
        /// 1-based position in the list.
        index: usize,
        /// Why.
        #[source]
        source: crate::rules::TenantError,
    },
    /// Two entries with the same hash.
    #[error("token {index}: the same token_sha256 is listed twice")]
    Duplicate {
        /// 1-based position in the list.
        index: usize,
    },
}

impl Tokens {
    /// Checks every entry; the first bad one is the error.
    pub fn from_config(entries: &[ApiTokenConfig]) -> Result<Tokens, TokenError> {
        let mut known: Vec<Known> = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let index = i + 1;
            let hash = parse_hex32(e.token_sha256.trim()).ok_or(TokenError::BadHash { index })?;
            let scope = match (&e.tenant, e.scope.as_deref().map(str::trim)) {
                (None, Some(s)) if s.eq_ignore_ascii_case("global") => Scope::Global,
                (Some(t), None) => Scope::Tenant(
                    Tenant::new(t).map_err(|source| TokenError::Tenant { index, source })?,
                ),
                _ => return Err(TokenError::Scope { index }),
            };
            if known.iter().any(|k| k.hash == hash) {
                return Err(TokenError::Duplicate { index });
            }
            let name = if e.name.trim().is_empty() {
                hex(&hash[..4])
            } else {
                e.name.trim().to_owned()
            };
            known.push(Known {
                hash,
                caller: Caller { name, scope },
            });
        }
        Ok(Tokens { known })
    }

    /// True when no token is configured (the API then refuses every request).
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// The caller `token` belongs to, if any. Compares hashes, every one of them, in constant
    /// time: how long a wrong guess takes tells nothing about any stored hash.
    pub fn check(&self, token: &str) -> Option<&Caller> {
        let presented = sha256(token.as_bytes());
        let mut found = None;
        for k in &self.known {
            if constant_time_eq(&k.hash, &presented) {
                found = Some(&k.caller);
            }
        }
        found
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimizer from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// A new random token (`cg_` and 64 hex digits: 256 bits from the system RNG) and its hash.
pub fn mint() -> Result<(String, String), ring::error::Unspecified> {
    use ring::rand::SecureRandom;
    let mut raw = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut raw)?;
    let token = format!("cg_{}", hex(&raw));
    let hash = hex(&sha256(token.as_bytes()));
    Ok((token, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(hash: &str, tenant: Option<&str>, scope: Option<&str>) -> ApiTokenConfig {
        ApiTokenConfig {
            name: String::new(),
            token_sha256: hash.to_owned(),
            tenant: tenant.map(str::to_owned),
            scope: scope.map(str::to_owned),
        }
    }

    #[test]
    fn minted_tokens_check_against_their_hash_only() {
        let (token, hash) = mint().expect("rng");
        assert!(token.starts_with("cg_") && token.len() == 67);
        let (other, other_hash) = mint().expect("rng");
        assert_ne!(token, other);
        let tokens = Tokens::from_config(&[
            entry(&hash, Some("Acme"), None),
            entry(&other_hash.to_uppercase(), None, Some("global")),
        ])
        .expect("valid");
        let acme = tokens.check(&token).expect("known");
        assert_eq!(
            acme.scope,
            Scope::Tenant(Tenant::new("acme").expect("name"))
        );
        assert_eq!(acme.name, hash[..8]);
        assert_eq!(tokens.check(&other).map(|c| &c.scope), Some(&Scope::Global));
        assert!(tokens.check("").is_none());
        assert!(tokens.check(&token[..66]).is_none());
        assert!(tokens.check(&hash).is_none(), "the hash is not the token");
    }

    #[test]
    fn sha256_known_answer() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn bad_entries_say_which_and_why() {
        let good = "a".repeat(64);
        for (bad, want) in [
            (entry("abc", Some("a"), None), "64 hex digits"),
            (entry(&"g".repeat(64), Some("a"), None), "64 hex digits"),
            (entry(&good, None, None), "exactly one"),
            (entry(&good, Some("a"), Some("global")), "exactly one"),
            (entry(&good, None, Some("everything")), "exactly one"),
            (entry(&good, Some("a b"), None), "tenant name"),
        ] {
            let err = Tokens::from_config(&[bad]).expect_err(want).to_string();
            assert!(err.contains(want) && err.starts_with("token 1:"), "{err}");
        }
        let twice = [entry(&good, Some("a"), None), entry(&good, Some("b"), None)];
        assert_eq!(
            Tokens::from_config(&twice).expect_err("dup"),
            TokenError::Duplicate { index: 2 }
        );
    }
}

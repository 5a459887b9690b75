//! The signed identity the gateway hands to upstreams: the JWT claims, the signing and
//! verification keys (with rotation), the public JWKS, the optional plain headers, and the
//! rule that decides which client-supplied headers could pose as identity.

mod claims;
mod headers;
mod jwks;
mod keys;
#[cfg(test)]
mod test_support;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use claims::{Claims, IdentityFacts, MintedIdentity};
pub use headers::{
    NICKNAME_HEADER, OPENID_HEADER, SCOPE_HEADER, SNAPSHOT_HEADER, UNIONID_HEADER, folded_eq,
    is_foreign_identity_header, is_identity_header, plain_headers,
};
pub use jwks::verify_with_jwks;
pub use keys::{KeySet, KeySource, generate_pem};

/// The JOSE signature algorithms an identity key may use; one key, one algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    HS256,
    RS256,
    ES256,
    EdDSA,
}

impl Algorithm {
    pub const ALL: [Algorithm; 4] = [
        Algorithm::HS256,
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ];

    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// The name with the key type, for error messages an operator acts on.
    fn key_description(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256 (shared secret)",
            Algorithm::RS256 => "RS256 (RSA)",
            Algorithm::ES256 => "ES256 (P-256 EC)",
            Algorithm::EdDSA => "EdDSA (Ed25519)",
        }
    }

    fn to_jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::HS256 => jsonwebtoken::Algorithm::HS256,
            Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|alg| alg.as_str() == s)
            .ok_or_else(|| IdentityError::UnknownAlgorithm(s.chars().take(32).collect()))
    }
}

/// Everything that can go wrong in this module. No variant carries key material, a secret
/// or a token: only paths, algorithm names and static reasons.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("unknown identity algorithm `{0}`: expected one of HS256, RS256, ES256, EdDSA")]
    UnknownAlgorithm(String),
    #[error("identity key file `{}` {problem}", path.display())]
    KeyFile {
        path: PathBuf,
        problem: KeyFileProblem,
    },
    #[error(
        "identity algorithm {0} needs `key_file` (a PEM private key; `wxgate keygen` writes one)"
    )]
    MissingKeyFile(Algorithm),
    #[error("identity algorithm HS256 needs `secret` (at least 32 bytes of random data)")]
    MissingSecret,
    #[error("identity HS256 secret is {len} bytes; it must be at least 32 bytes of random data")]
    SecretTooShort { len: usize },
    #[error("identity key `{kid}` is listed twice (current and previous keys must differ)")]
    DuplicateKey { kid: String },
    #[error("HS256 has no key file to generate; set `identity.secret` to at least 32 random bytes")]
    GenerateHs256,
    #[error("generating a {0} key failed")]
    Generate(Algorithm),
    #[error("signing the identity token failed: {0}")]
    Sign(jsonwebtoken::errors::Error),
    #[error("the signed identity token is not a valid header value")]
    HeaderValue,
    #[error("the JWKS is not usable: {0}")]
    Jwks(&'static str),
    #[error("identity token refused: {0}")]
    Rejected(Rejection),
}

/// Why a key file could not be used; the file's bytes never appear here.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileProblem {
    #[error("cannot be read: {0}")]
    Unreadable(#[source] std::io::Error),
    #[error("holds no PEM `PRIVATE KEY` block")]
    NoPrivateKey,
    #[error("holds an encrypted private key; use an unencrypted PKCS#8 key")]
    Encrypted,
    #[error("holds a PEM block whose base64 is invalid")]
    BadPem,
    #[error("does not hold a valid {expected} private key: {reason}")]
    WrongKeyType {
        expected: &'static str,
        reason: &'static str,
    },
}

/// Why a token was refused, as a verifier would report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("token is larger than the limit")]
    TooLarge,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token header has no `kid`")]
    MissingKid,
    #[error("token `kid` is not a known key")]
    UnknownKid,
    #[error("token `alg` is not the algorithm of its key")]
    AlgorithmNotAllowed,
    #[error("token `typ` is not JWT")]
    WrongType,
    #[error("token header marks extensions critical")]
    CriticalHeader,
    #[error("signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not yet valid")]
    NotYetValid,
    #[error("token issuer is wrong")]
    WrongIssuer,
    #[error("token audience is wrong")]
    WrongAudience,
    #[error("token lacks a required claim or has one of the wrong type")]
    BadClaims,
}

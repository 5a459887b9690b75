//! Public keys as JWKs (RFC 7517) with RFC 7638 thumbprints as `kid`, the published JWKS,
//! and token verification with the algorithm pinned per key (RFC 8725 §3.1).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::claims::Claims;
use super::{Algorithm, IdentityError, Rejection};

/// Our tokens are well under 2 KB; anything far larger is refused before any parsing.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 30;

const P256_COORD_LEN: usize = 32;
const ED25519_KEY_LEN: usize = 32;
const MIN_RSA_MODULUS_LEN: usize = 256;

/// The public half of an asymmetric identity key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PublicKey {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    P256 { x: Vec<u8>, y: Vec<u8> },
    Ed25519 { x: Vec<u8> },
}

impl PublicKey {
    /// From the SEC1 uncompressed point `04 || x || y`.
    pub(crate) fn p256_from_uncompressed(point: &[u8]) -> Option<Self> {
        match point {
            [4, coords @ ..] if coords.len() == 2 * P256_COORD_LEN => {
                let (x, y) = coords.split_at(P256_COORD_LEN);
                Some(PublicKey::P256 {
                    x: x.to_vec(),
                    y: y.to_vec(),
                })
            }
            _ => None,
        }
    }

    fn algorithm(&self) -> Algorithm {
        match self {
            PublicKey::Rsa { .. } => Algorithm::RS256,
            PublicKey::P256 { .. } => Algorithm::ES256,
            PublicKey::Ed25519 { .. } => Algorithm::EdDSA,
        }
    }

    /// RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace.
    pub(crate) fn thumbprint(&self) -> String {
        let canonical = match self {
            PublicKey::Rsa { n, e } => {
                format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, b64(e), b64(n))
            }
            PublicKey::P256 { x, y } => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                b64(x),
                b64(y)
            ),
            PublicKey::Ed25519 { x } => {
                format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64(x))
            }
        };
        b64(Sha256::digest(canonical.as_bytes()))
    }

    pub(crate) fn decoding_key(&self) -> DecodingKey {
        match self {
            PublicKey::Rsa { n, e } => DecodingKey::from_rsa_raw_components(n, e),
            PublicKey::P256 { x, y } => {
                let point: Vec<u8> = [&[4u8][..], x, y].concat();
                DecodingKey::from_ec_der(&point)
            }
            PublicKey::Ed25519 { x } => DecodingKey::from_ed_der(x),
        }
    }

    fn to_jwk(&self, kid: &str) -> Jwk {
        let mut jwk = Jwk {
            kid: Some(kid.to_owned()),
            alg: Some(self.algorithm().as_str().to_owned()),
            use_: Some("sig".to_owned()),
            ..Jwk::default()
        };
        match self {
            PublicKey::Rsa { n, e } => {
                jwk.kty = "RSA".to_owned();
                jwk.n = Some(b64(n));
                jwk.e = Some(b64(e));
            }
            PublicKey::P256 { x, y } => {
                jwk.kty = "EC".to_owned();
                jwk.crv = Some("P-256".to_owned());
                jwk.x = Some(b64(x));
                jwk.y = Some(b64(y));
            }
            PublicKey::Ed25519 { x } => {
                jwk.kty = "OKP".to_owned();
                jwk.crv = Some("Ed25519".to_owned());
                jwk.x = Some(b64(x));
            }
        }
        jwk
    }

    /// Reads a published JWK; `None` for keys this gateway never publishes (HMAC, other
    /// curves, encryption keys), so a shared JWKS with foreign keys still works.
    fn from_jwk(jwk: &Jwk) -> Result<Option<Self>, IdentityError> {
        if jwk.use_.as_deref().is_some_and(|use_| use_ != "sig") {
            return Ok(None);
        }
        let key = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("RSA", _) => PublicKey::Rsa {
                n: member(&jwk.n, "RSA key without `n`")?,
                e: member(&jwk.e, "RSA key without `e`")?,
            },
            ("EC", Some("P-256")) => PublicKey::P256 {
                x: member(&jwk.x, "EC key without `x`")?,
                y: member(&jwk.y, "EC key without `y`")?,
            },
            ("OKP", Some("Ed25519")) => PublicKey::Ed25519 {
                x: member(&jwk.x, "OKP key without `x`")?,
            },
            _ => return Ok(None),
        };
        // The algorithm is the key's, never the token's: a JWK claiming another one is foreign.
        if jwk
            .alg
            .as_deref()
            .is_some_and(|alg| alg != key.algorithm().as_str())
        {
            return Ok(None);
        }
        key.check_sizes()?;
        Ok(Some(key))
    }

    fn check_sizes(&self) -> Result<(), IdentityError> {
        let ok = match self {
            PublicKey::Rsa { n, e } => n.len() >= MIN_RSA_MODULUS_LEN && !e.is_empty(),
            PublicKey::P256 { x, y } => x.len() == P256_COORD_LEN && y.len() == P256_COORD_LEN,
            PublicKey::Ed25519 { x } => x.len() == ED25519_KEY_LEN,
        };
        if ok {
            Ok(())
        } else {
            Err(IdentityError::Jwks("a key has members of the wrong size"))
        }
    }
}

fn member(value: &Option<String>, missing: &'static str) -> Result<Vec<u8>, IdentityError> {
    let value = value.as_deref().ok_or(IdentityError::Jwks(missing))?;
    URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| IdentityError::Jwks("a key member is not base64url"))
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The JWK members this gateway writes and reads, in the order it writes them.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alg: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    use_: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

/// The JWKS document for the given keys, in the given order (current key first).
pub(crate) fn encode_jwks(keys: &[(&str, &PublicKey)]) -> Bytes {
    let set = JwkSet {
        keys: keys.iter().map(|(kid, key)| key.to_jwk(kid)).collect(),
    };
    // Serialising plain strings into a Vec cannot fail; an empty set is the safe fallback.
    Bytes::from(serde_json::to_vec(&set).unwrap_or_else(|_| br#"{"keys":[]}"#.to_vec()))
}

/// A key a token may name by `kid`, and the one algorithm it is used with.
#[derive(Clone)]
pub(crate) struct VerifyingKey {
    pub(crate) kid: String,
    pub(crate) algorithm: Algorithm,
    pub(crate) key: DecodingKey,
}

/// Verifies a token signed by one of `keys`: the key is picked by `kid` alone and only its
/// own algorithm is accepted, so `alg: none` and HMAC-with-a-public-key tricks are refused.
pub(crate) fn verify_token(
    keys: &[VerifyingKey],
    token: &str,
    issuer: &str,
    audience: &str,
) -> Result<Claims, IdentityError> {
    let reject = IdentityError::Rejected;
    if token.len() > MAX_TOKEN_LEN {
        return Err(reject(Rejection::TooLarge));
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| reject(Rejection::Malformed))?;
    let kid = header.kid.as_deref().ok_or(reject(Rejection::MissingKid))?;
    let key = keys
        .iter()
        .find(|key| key.kid == kid)
        .ok_or(reject(Rejection::UnknownKid))?;
    if header.alg != key.algorithm.to_jwt() {
        return Err(reject(Rejection::AlgorithmNotAllowed));
    }
    if !header
        .typ
        .as_deref()
        .is_some_and(|typ| typ.eq_ignore_ascii_case("JWT"))
    {
        return Err(reject(Rejection::WrongType));
    }
    if header.crit.is_some() {
        return Err(reject(Rejection::CriticalHeader));
    }

    let mut validation = Validation::new(key.algorithm.to_jwt());
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
        .map_err(|err| reject(rejection_of(err.kind())))?
        .claims;
    check_issued_at(&claims)?;
    Ok(claims)
}

/// jsonwebtoken does not check `iat`; a token issued in the future or living backwards is
/// not one this gateway minted.
fn check_issued_at(claims: &Claims) -> Result<(), IdentityError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    if claims.iat > now.saturating_add(LEEWAY_SECS) {
        return Err(IdentityError::Rejected(Rejection::NotYetValid));
    }
    if claims.exp < claims.iat {
        return Err(IdentityError::Rejected(Rejection::BadClaims));
    }
    Ok(())
}

fn rejection_of(kind: &ErrorKind) -> Rejection {
    match kind {
        ErrorKind::InvalidSignature => Rejection::BadSignature,
        ErrorKind::ExpiredSignature => Rejection::Expired,
        ErrorKind::ImmatureSignature => Rejection::NotYetValid,
        ErrorKind::InvalidIssuer => Rejection::WrongIssuer,
        ErrorKind::InvalidAudience => Rejection::WrongAudience,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => Rejection::AlgorithmNotAllowed,
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::InvalidSubject
        | ErrorKind::Json(_) => Rejection::BadClaims,
        _ => Rejection::Malformed,
    }
}

/// Verifies a token with a published JWKS document (what `wxgate verify` and upstream
/// examples do). Only asymmetric keys can be verified this way; HS256 needs the secret.
pub fn verify_with_jwks(
    token: &str,
    jwks_json: &[u8],
    issuer: &str,
    audience: &str,
) -> Result<Claims, IdentityError> {
    let keys = keys_from_jwks(jwks_json)?;
    verify_token(&keys, token, issuer, audience)
}

fn keys_from_jwks(jwks_json: &[u8]) -> Result<Vec<VerifyingKey>, IdentityError> {
    let set: JwkSet = serde_json::from_slice(jwks_json)
        .map_err(|_| IdentityError::Jwks("not a JSON object with a `keys` array"))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for jwk in &set.keys {
        let (Some(kid), Some(public)) = (jwk.kid.as_deref(), PublicKey::from_jwk(jwk)?) else {
            continue;
        };
        keys.push(VerifyingKey {
            kid: kid.to_owned(),
            algorithm: public.algorithm(),
            key: public.decoding_key(),
        });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::test_support::{AUDIENCE, ISSUER, claims, key_set};

    #[test]
    fn jwks_lists_each_asymmetric_key_with_its_public_members_only() {
        let cases = [
            (Algorithm::RS256, "RSA", None, &["n", "e"][..]),
            (Algorithm::ES256, "EC", Some("P-256"), &["x", "y"][..]),
            (Algorithm::EdDSA, "OKP", Some("Ed25519"), &["x"][..]),
        ];
        for (algorithm, kty, crv, members) in cases {
            let set = key_set(algorithm);
            let jwks: serde_json::Value = serde_json::from_slice(set.jwks()).unwrap();
            let keys = jwks["keys"].as_array().unwrap();
            assert_eq!(keys.len(), 1, "{algorithm}");
            let key = keys[0].as_object().unwrap();
            assert_eq!(key["kty"], kty, "{algorithm}");
            assert_eq!(key.get("crv").and_then(|v| v.as_str()), crv, "{algorithm}");
            assert_eq!(key["alg"], algorithm.as_str(), "{algorithm}");
            assert_eq!(key["use"], "sig", "{algorithm}");
            assert_eq!(key["kid"], set.signing_kid(), "{algorithm}");
            let mut expected: Vec<&str> = ["kty", "kid", "alg", "use"].to_vec();
            expected.extend(members);
            expected.extend(crv.map(|_| "crv"));
            let mut present: Vec<&str> = key.keys().map(String::as_str).collect();
            expected.sort_unstable();
            present.sort_unstable();
            assert_eq!(
                present, expected,
                "{algorithm}: no private members such as `d`"
            );

            let signed = claims();
            let token = set.sign(&signed).unwrap();
            let verified = verify_with_jwks(&token, set.jwks(), ISSUER, AUDIENCE).unwrap();
            assert_eq!(verified, signed, "{algorithm}");
        }
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        // RFC 7638 §3.1 and RFC 8037 appendix A.3.
        let rsa_n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).unwrap();
        let cases = [
            (
                PublicKey::Rsa {
                    n: decode(rsa_n),
                    e: decode("AQAB"),
                },
                "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs",
            ),
            (
                PublicKey::Ed25519 {
                    x: decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
                },
                "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k",
            ),
        ];
        for (key, thumbprint) in cases {
            assert_eq!(key.thumbprint(), thumbprint, "{key:?}");
        }
    }

    #[test]
    fn ec_kid_matches_jsonwebtoken_thumbprint() {
        let set = key_set(Algorithm::ES256);
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(set.jwks()).unwrap();
        let theirs = jwks.keys[0].thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256);
        assert_eq!(theirs, set.signing_kid());
    }

    #[test]
    fn jwks_verification_refuses_unusable_documents_and_foreign_keys() {
        let set = key_set(Algorithm::ES256);
        let token = set.sign(&claims()).unwrap();
        let kid = set.signing_kid();
        let jwks: serde_json::Value = serde_json::from_slice(set.jwks()).unwrap();
        let key = &jwks["keys"][0];
        let with = |change: &dyn Fn(&mut serde_json::Value)| {
            let mut key = key.clone();
            change(&mut key);
            serde_json::json!({ "keys": [key] }).to_string()
        };
        let relabelled = with(&|key| key["alg"] = "RS256".into());
        let encryption = with(&|key| key["use"] = "enc".into());
        let short_x = with(&|key| key["x"] = "AAAA".into());
        let hmac = serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": kid, "alg": "HS256"}]}).to_string();

        let rejected = |jwks: &str| verify_with_jwks(&token, jwks.as_bytes(), ISSUER, AUDIENCE);
        assert!(matches!(rejected("[]"), Err(IdentityError::Jwks(_))));
        assert!(matches!(rejected("not json"), Err(IdentityError::Jwks(_))));
        assert!(matches!(rejected(&short_x), Err(IdentityError::Jwks(_))));
        for foreign in [relabelled, encryption, hmac, r#"{"keys":[]}"#.to_owned()] {
            assert!(
                matches!(
                    rejected(&foreign),
                    Err(IdentityError::Rejected(Rejection::UnknownKid))
                ),
                "{foreign}"
            );
        }
    }

    #[test]
    fn hs256_tokens_cannot_be_verified_through_the_jwks() {
        let set = key_set(Algorithm::HS256);
        let token = set.sign(&claims()).unwrap();
        assert!(set.verify(&token, ISSUER, AUDIENCE).is_ok());
        assert!(matches!(
            verify_with_jwks(&token, set.jwks(), ISSUER, AUDIENCE),
            Err(IdentityError::Rejected(Rejection::UnknownKid))
        ));
    }
}

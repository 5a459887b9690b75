//! Identity signing keys: loading them from PEM files or a shared secret, the key set that
//! signs with the current key and still verifies with previous ones (rotation), and `keygen`.

use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair,
    RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use jsonwebtoken::{DecodingKey, EncodingKey, Header};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::{self, PemObject};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::claims::{Claims, MintedIdentity};
use super::jwks::{self, PublicKey, VerifyingKey};
use super::{Algorithm, IdentityError, KeyFileProblem};

/// RFC 8725 §3.5: an HMAC key must carry at least as much entropy as the hash output.
const MIN_SECRET_LEN: usize = 32;

/// Domain separation so the published HS256 `kid` is useless for guessing the secret.
const HS256_KID_DOMAIN: &[u8] = b"wxgate identity hs256 kid v1\0";

/// One configured identity key: an algorithm plus where its private material lives
/// (`key_file` for RS256/ES256/EdDSA, `secret` for HS256; the other field is ignored).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySource {
    pub algorithm: Algorithm,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub secret: Option<String>,
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySource")
            .field("algorithm", &self.algorithm)
            .field("key_file", &self.key_file)
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// The current signing key plus the previous keys that still verify, so tokens minted just
/// before a rotation stay valid until they expire. The JWKS is built once, at load.
#[derive(Clone)]
pub struct KeySet {
    header: Header,
    signing_key: EncodingKey,
    verifying: Vec<VerifyingKey>,
    jwks: Bytes,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self.verifying.iter().map(|key| key.kid.as_str()).collect();
        f.debug_struct("KeySet")
            .field("signing_kid", &self.header.kid)
            .field("kids", &kids)
            .finish_non_exhaustive()
    }
}

impl KeySet {
    /// Loads the current key and the verification-only previous keys. Fails on any unusable
    /// key and on a key listed twice, since two entries with one `kid` make rotation ambiguous.
    pub fn load(current: &KeySource, previous: &[KeySource]) -> Result<Self, IdentityError> {
        let current = LoadedKey::load(current)?;
        let previous = previous
            .iter()
            .map(LoadedKey::load)
            .collect::<Result<Vec<_>, _>>()?;

        let mut verifying: Vec<VerifyingKey> = Vec::with_capacity(previous.len() + 1);
        let mut published: Vec<(&str, &PublicKey)> = Vec::new();
        for key in std::iter::once(&current).chain(&previous) {
            if verifying.iter().any(|known| known.kid == key.verifying.kid) {
                return Err(IdentityError::DuplicateKey {
                    kid: key.verifying.kid.clone(),
                });
            }
            verifying.push(key.verifying.clone());
            if let Some(public) = &key.public {
                published.push((&key.verifying.kid, public));
            }
        }
        let jwks = jwks::encode_jwks(&published);

        let mut header = Header::new(current.verifying.algorithm.to_jwt());
        header.kid = Some(current.verifying.kid.clone());
        Ok(KeySet {
            header,
            signing_key: current.signing_key,
            verifying,
            jwks,
        })
    }

    /// Signs the claims with the current key; the header carries `alg`, `kid` and `typ: JWT`.
    pub fn sign(&self, claims: &Claims) -> Result<String, IdentityError> {
        jsonwebtoken::encode(&self.header, claims, &self.signing_key).map_err(IdentityError::Sign)
    }

    /// Signs the claims and wraps the token for reuse until it nears expiry.
    pub fn mint(&self, claims: &Claims) -> Result<MintedIdentity, IdentityError> {
        MintedIdentity::new(&self.sign(claims)?, claims)
    }

    /// The JSON Web Key Set of the public keys, current first; HS256 keys are never listed.
    pub fn jwks(&self) -> &Bytes {
        &self.jwks
    }

    /// The `kid` new tokens are signed with.
    pub fn signing_kid(&self) -> &str {
        self.header.kid.as_deref().unwrap_or_default()
    }

    /// Verifies a token against every loaded key (HS256 included), the key chosen by `kid`
    /// and only that key's algorithm accepted.
    pub fn verify(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
    ) -> Result<Claims, IdentityError> {
        jwks::verify_token(&self.verifying, token, issuer, audience)
    }
}

/// One key after loading: what signs, what verifies, and what (if anything) is published.
struct LoadedKey {
    signing_key: EncodingKey,
    verifying: VerifyingKey,
    public: Option<PublicKey>,
}

impl LoadedKey {
    fn load(source: &KeySource) -> Result<Self, IdentityError> {
        match source.algorithm {
            Algorithm::HS256 => Self::from_secret(source.secret.as_deref()),
            algorithm => {
                let path = source
                    .key_file
                    .as_deref()
                    .ok_or(IdentityError::MissingKeyFile(algorithm))?;
                Self::from_key_file(algorithm, path).map_err(|problem| IdentityError::KeyFile {
                    path: path.to_path_buf(),
                    problem,
                })
            }
        }
    }

    fn from_secret(secret: Option<&str>) -> Result<Self, IdentityError> {
        let secret = secret
            .filter(|secret| !secret.is_empty())
            .ok_or(IdentityError::MissingSecret)?;
        if secret.len() < MIN_SECRET_LEN {
            return Err(IdentityError::SecretTooShort { len: secret.len() });
        }
        Ok(LoadedKey {
            signing_key: EncodingKey::from_secret(secret.as_bytes()),
            verifying: VerifyingKey {
                kid: hs256_kid(secret.as_bytes()),
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes()),
            },
            public: None,
        })
    }

    fn from_key_file(algorithm: Algorithm, path: &Path) -> Result<Self, KeyFileProblem> {
        let bytes = std::fs::read(path).map_err(KeyFileProblem::Unreadable)?;
        let (label, der) = private_key_block(&String::from_utf8_lossy(&bytes))?;
        let (signing_key, public) = parse_private_key(algorithm, &label, &der)?;
        let kid = public.thumbprint();
        Ok(LoadedKey {
            signing_key,
            verifying: VerifyingKey {
                kid,
                algorithm,
                key: public.decoding_key(),
            },
            public: Some(public),
        })
    }
}

/// A non-reversible id for a shared secret: upstreams can tell keys apart, nobody learns it.
fn hs256_kid(secret: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(HS256_KID_DOMAIN)
        .chain_update(secret)
        .finalize();
    URL_SAFE_NO_PAD.encode(digest).chars().take(16).collect()
}

/// Parses the DER of one PEM block as the configured algorithm's private key and returns the
/// key in the form jsonwebtoken signs with, plus its public half.
fn parse_private_key(
    algorithm: Algorithm,
    label: &str,
    der: &[u8],
) -> Result<(EncodingKey, PublicKey), KeyFileProblem> {
    let expected = algorithm.key_description();
    let rejected = |reason: &'static str| KeyFileProblem::WrongKeyType { expected, reason };
    match (algorithm, label) {
        (Algorithm::RS256, "PRIVATE KEY" | "RSA PRIVATE KEY") => {
            let pair = if label == "PRIVATE KEY" {
                RsaKeyPair::from_pkcs8(der)
            } else {
                RsaKeyPair::from_der(der)
            }
            .map_err(|err| rejected(plain_reason(err.description_())))?;
            let components = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
            // jsonwebtoken signs RSA from PKCS#1; its PEM reader unwraps PKCS#8 for us.
            let signing = EncodingKey::from_rsa_pem(encode_pem(label, der).as_bytes())
                .map_err(|_| rejected("the JWT library refused the RSA key"))?;
            let public = PublicKey::Rsa {
                n: components.n,
                e: components.e,
            };
            Ok((signing, public))
        }
        (Algorithm::ES256, "PRIVATE KEY" | "EC PRIVATE KEY") => {
            // Accepts PKCS#8 and SEC1; re-encoding as PKCS#8 is what jsonwebtoken expects.
            let pair = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                .map_err(|err| rejected(plain_reason(err.description_())))?;
            let pkcs8 = pair
                .to_pkcs8v1()
                .map_err(|_| rejected("the key cannot be re-encoded as PKCS#8"))?;
            let public = PublicKey::p256_from_uncompressed(pair.public_key().as_ref())
                .ok_or_else(|| rejected("unexpected public key encoding"))?;
            Ok((EncodingKey::from_ec_der(pkcs8.as_ref()), public))
        }
        (Algorithm::EdDSA, "PRIVATE KEY") => {
            let pair = Ed25519KeyPair::from_pkcs8(der)
                .map_err(|err| rejected(plain_reason(err.description_())))?;
            let pkcs8 = pair
                .to_pkcs8v1()
                .map_err(|_| rejected("the key cannot be re-encoded as PKCS#8"))?;
            let public = PublicKey::Ed25519 {
                x: pair.public_key().as_ref().to_vec(),
            };
            Ok((EncodingKey::from_ed_der(pkcs8.as_ref()), public))
        }
        (_, "EC PRIVATE KEY") => Err(rejected("the file holds a SEC1 EC key")),
        (_, "RSA PRIVATE KEY") => Err(rejected("the file holds a PKCS#1 RSA key")),
        _ => Err(rejected("unsupported PEM block type")),
    }
}

/// aws-lc's reason for refusing a key (`WrongAlgorithm`, `InvalidEncoding`…) as words an
/// operator can act on.
fn plain_reason(description: &'static str) -> &'static str {
    match description {
        "WrongAlgorithm" => {
            "it is a key of another algorithm: set identity.algorithm to the key's, or write a \
             new key with `wxgate keygen --algorithm <identity.algorithm>`"
        }
        "InvalidEncoding" | "InvalidComponent" | "InconsistentComponents" => {
            "its contents are not a well-formed key of that type"
        }
        "TooSmall" => "the key is too small; use at least 2048-bit RSA",
        "TooLarge" => "the key is larger than supported (RSA up to 8192 bits)",
        "VersionNotSupported" => "its PKCS#8 version is not supported; write it again as PKCS#8 v1",
        "PublicKeyIsMissing" => "the file lacks the public half the key format needs",
        _ => "the key could not be used",
    }
}

/// The first private key in the file (it may also hold a certificate) as its PEM label and
/// DER, read by rustls-pki-types' PEM reader as the TLS listener reads its key.
fn private_key_block(text: &str) -> Result<(String, Vec<u8>), KeyFileProblem> {
    // Encrypted keys (PKCS#8 `ENCRYPTED PRIVATE KEY`, or OpenSSL's legacy `Proc-Type`
    // header) are named as such: the reader would only see no usable key.
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || text.contains("Proc-Type: 4,ENCRYPTED")
    {
        return Err(KeyFileProblem::Encrypted);
    }
    match PrivateKeyDer::from_pem_slice(text.as_bytes()) {
        Ok(PrivateKeyDer::Pkcs8(key)) => {
            Ok(("PRIVATE KEY".into(), key.secret_pkcs8_der().to_vec()))
        }
        Ok(PrivateKeyDer::Pkcs1(key)) => {
            Ok(("RSA PRIVATE KEY".into(), key.secret_pkcs1_der().to_vec()))
        }
        Ok(PrivateKeyDer::Sec1(key)) => {
            Ok(("EC PRIVATE KEY".into(), key.secret_sec1_der().to_vec()))
        }
        Ok(_) | Err(pem::Error::NoItemsFound) => Err(KeyFileProblem::NoPrivateKey),
        Err(_) => Err(KeyFileProblem::BadPem),
    }
}

fn encode_pem(label: &str, der: &[u8]) -> String {
    let base64 = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for (i, c) in base64.chars().enumerate() {
        if i > 0 && i % 64 == 0 {
            pem.push('\n');
        }
        pem.push(c);
    }
    pem.push_str(&format!("\n-----END {label}-----\n"));
    pem
}

/// A fresh private key for `algorithm` as a PKCS#8 PEM document (what `wxgate keygen` writes).
pub fn generate_pem(algorithm: Algorithm) -> Result<String, IdentityError> {
    let failed = |_| IdentityError::Generate(algorithm);
    let der: Vec<u8> = match algorithm {
        Algorithm::HS256 => return Err(IdentityError::GenerateHs256),
        Algorithm::RS256 => RsaKeyPair::generate(KeySize::Rsa2048)
            .and_then(|pair| AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair))
            .map_err(failed)?
            .as_ref()
            .to_vec(),
        Algorithm::ES256 => EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .and_then(|pair| pair.to_pkcs8v1())
            .map_err(failed)?
            .as_ref()
            .to_vec(),
        Algorithm::EdDSA => Ed25519KeyPair::generate()
            .and_then(|pair| pair.to_pkcs8v1())
            .map_err(failed)?
            .as_ref()
            .to_vec(),
    };
    Ok(encode_pem("PRIVATE KEY", &der))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_lc_rs::signature::EcdsaKeyPair;
    use serde_json::json;

    use super::*;
    use crate::identity::Rejection;
    use crate::identity::test_support::{
        AUDIENCE, ISSUER, SECRET, claims, claims_aged, key_set, pem, source,
    };

    fn encode_raw(
        header: &serde_json::Value,
        payload: &serde_json::Value,
        signature: &[u8],
    ) -> String {
        let part = |value: &serde_json::Value| URL_SAFE_NO_PAD.encode(value.to_string());
        format!(
            "{}.{}.{}",
            part(header),
            part(payload),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    fn rejection(result: Result<Claims, IdentityError>) -> Rejection {
        match result {
            Err(IdentityError::Rejected(rejection)) => rejection,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn tokens_signed_with_each_algorithm_verify_and_carry_alg_kid_typ() {
        for algorithm in Algorithm::ALL {
            let set = key_set(algorithm);
            let claims = claims();
            let token = set.sign(&claims).unwrap();

            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.alg, algorithm.to_jwt(), "{algorithm}");
            assert_eq!(
                header.kid.as_deref(),
                Some(set.signing_kid()),
                "{algorithm}"
            );
            assert_eq!(header.typ.as_deref(), Some("JWT"), "{algorithm}");
            assert_eq!(
                set.verify(&token, ISSUER, AUDIENCE).unwrap(),
                claims,
                "{algorithm}"
            );
        }
    }

    #[test]
    fn forged_misaddressed_and_stale_tokens_are_refused() {
        let set = key_set(Algorithm::RS256);
        let other = {
            let dir = tempfile::tempdir().unwrap();
            KeySet::load(&source(dir.path(), Algorithm::RS256, 1), &[]).unwrap()
        };
        let kid = set.signing_kid().to_owned();
        let good = set.sign(&claims()).unwrap();
        let payload = serde_json::to_value(claims()).unwrap();
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});

        let tampered = {
            let parts: Vec<&str> = good.split('.').collect();
            let mut forged = payload.clone();
            forged["openid"] = json!("attacker");
            forged["sub"] = json!("attacker");
            let forged = URL_SAFE_NO_PAD.encode(forged.to_string());
            format!("{}.{}.{}", parts[0], forged, parts[2])
        };
        let alg_none = encode_raw(
            &json!({"alg": "none", "typ": "JWT", "kid": kid}),
            &payload,
            b"",
        );
        let sign_with = |header: &Header, key: &EncodingKey, body: &serde_json::Value| {
            jsonwebtoken::encode(header, body, key).unwrap()
        };
        let same_kid_other_key = sign_with(&set.header, &other.signing_key, &payload);
        let unknown_kid = other.sign(&claims()).unwrap();
        let mut no_kid_header = set.header.clone();
        no_kid_header.kid = None;
        let missing_kid = sign_with(&no_kid_header, &set.signing_key, &payload);
        let mut cty_header = set.header.clone();
        cty_header.typ = Some("at+jwt".into());
        let wrong_typ = sign_with(&cty_header, &set.signing_key, &payload);
        let mut crit_header = set.header.clone();
        crit_header.crit = Some(vec!["exp".into()]);
        let critical = sign_with(&crit_header, &set.signing_key, &payload);
        let expired = set.sign(&claims_aged(Duration::from_secs(3600))).unwrap();
        let mut future = claims();
        future.iat += 3600;
        future.exp += 3600;
        let issued_in_future = set.sign(&future).unwrap();
        let mut string_exp = payload.clone();
        string_exp["exp"] = json!("9999999999");
        let string_exp = sign_with(&set.header, &set.signing_key, &string_exp);
        let mut no_exp = payload.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        let no_exp = sign_with(&set.header, &set.signing_key, &no_exp);
        let mut future_nbf = payload.clone();
        future_nbf["nbf"] = json!(future.iat);
        let future_nbf = sign_with(&set.header, &set.signing_key, &future_nbf);
        let oversized = encode_raw(&header, &json!({"pad": "a".repeat(16 * 1024)}), b"sig");

        let cases: Vec<(&str, &str, &str, &str, Rejection)> = vec![
            (
                "tampered payload",
                &tampered,
                ISSUER,
                AUDIENCE,
                Rejection::BadSignature,
            ),
            (
                "alg none",
                &alg_none,
                ISSUER,
                AUDIENCE,
                Rejection::Malformed,
            ),
            (
                "same kid, another key",
                &same_kid_other_key,
                ISSUER,
                AUDIENCE,
                Rejection::BadSignature,
            ),
            (
                "unknown kid",
                &unknown_kid,
                ISSUER,
                AUDIENCE,
                Rejection::UnknownKid,
            ),
            (
                "missing kid",
                &missing_kid,
                ISSUER,
                AUDIENCE,
                Rejection::MissingKid,
            ),
            (
                "wrong typ",
                &wrong_typ,
                ISSUER,
                AUDIENCE,
                Rejection::WrongType,
            ),
            (
                "crit header",
                &critical,
                ISSUER,
                AUDIENCE,
                Rejection::CriticalHeader,
            ),
            (
                "wrong audience",
                &good,
                ISSUER,
                "another-upstream",
                Rejection::WrongAudience,
            ),
            (
                "wrong issuer",
                &good,
                "evil",
                AUDIENCE,
                Rejection::WrongIssuer,
            ),
            ("expired", &expired, ISSUER, AUDIENCE, Rejection::Expired),
            (
                "issued in the future",
                &issued_in_future,
                ISSUER,
                AUDIENCE,
                Rejection::NotYetValid,
            ),
            (
                "nbf in the future",
                &future_nbf,
                ISSUER,
                AUDIENCE,
                Rejection::NotYetValid,
            ),
            (
                "exp as a string",
                &string_exp,
                ISSUER,
                AUDIENCE,
                Rejection::BadClaims,
            ),
            (
                "exp missing",
                &no_exp,
                ISSUER,
                AUDIENCE,
                Rejection::BadClaims,
            ),
            (
                "16 KB token",
                &oversized,
                ISSUER,
                AUDIENCE,
                Rejection::TooLarge,
            ),
            (
                "not a JWT",
                "not.a.jwt",
                ISSUER,
                AUDIENCE,
                Rejection::Malformed,
            ),
        ];
        assert!(set.verify(&good, ISSUER, AUDIENCE).is_ok());
        for (name, token, issuer, audience, expected) in cases {
            assert_eq!(
                rejection(set.verify(token, issuer, audience)),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn hs256_token_keyed_with_the_public_key_is_refused_for_every_asymmetric_key() {
        for algorithm in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
            let set = key_set(algorithm);
            let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
            header.kid = Some(set.signing_kid().to_owned());
            // Whatever public form a verifier might feed to HMAC: the JWKS or a public PEM.
            for public in [set.jwks().to_vec(), public_pem(algorithm).into_bytes()] {
                let forged =
                    jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&public))
                        .unwrap();
                assert_eq!(
                    rejection(set.verify(&forged, ISSUER, AUDIENCE)),
                    Rejection::AlgorithmNotAllowed,
                    "{algorithm}"
                );
                assert_eq!(
                    rejection(verify_with_jwks_bytes(&forged, set.jwks())),
                    Rejection::AlgorithmNotAllowed,
                    "{algorithm} via JWKS"
                );
            }
        }
    }

    fn verify_with_jwks_bytes(token: &str, jwks: &Bytes) -> Result<Claims, IdentityError> {
        crate::identity::verify_with_jwks(token, jwks, ISSUER, AUDIENCE)
    }

    fn public_pem(algorithm: Algorithm) -> String {
        let (_, der) = private_key_block(pem(algorithm, 0)).unwrap();
        let public_der: Vec<u8> = match algorithm {
            Algorithm::RS256 => {
                let pair = RsaKeyPair::from_pkcs8(&der).unwrap();
                AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(pair.public_key())
                    .unwrap()
                    .as_ref()
                    .to_vec()
            }
            Algorithm::ES256 => {
                let pair =
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).unwrap();
                pair.public_key().as_der().unwrap().as_ref().to_vec()
            }
            Algorithm::EdDSA => {
                let pair = Ed25519KeyPair::from_pkcs8(&der).unwrap();
                pair.public_key().as_der().unwrap().as_ref().to_vec()
            }
            Algorithm::HS256 => unreachable!(),
        };
        encode_pem("PUBLIC KEY", &public_der)
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_while_the_old_key_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let old_source = source(dir.path(), Algorithm::ES256, 0);
        let new_source = source(dir.path(), Algorithm::ES256, 1);
        let old = KeySet::load(&old_source, &[]).unwrap();
        let old_token = old.sign(&claims()).unwrap();

        let rotated = KeySet::load(&new_source, std::slice::from_ref(&old_source)).unwrap();
        assert_ne!(rotated.signing_kid(), old.signing_kid());
        assert!(rotated.verify(&old_token, ISSUER, AUDIENCE).is_ok());
        assert!(verify_with_jwks_bytes(&old_token, rotated.jwks()).is_ok());
        let new_token = rotated.sign(&claims()).unwrap();
        let new_header = jsonwebtoken::decode_header(&new_token).unwrap();
        assert_eq!(new_header.kid.as_deref(), Some(rotated.signing_kid()));

        let jwks: serde_json::Value = serde_json::from_slice(rotated.jwks()).unwrap();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|key| key["kid"].as_str().unwrap())
            .collect();
        assert_eq!(
            kids,
            [rotated.signing_kid(), old.signing_kid()],
            "current first"
        );

        let retired = KeySet::load(&new_source, &[]).unwrap();
        assert_eq!(
            rejection(retired.verify(&old_token, ISSUER, AUDIENCE)),
            Rejection::UnknownKid
        );
    }

    #[test]
    fn a_key_listed_as_both_current_and_previous_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = source(dir.path(), Algorithm::EdDSA, 0);
        let err = KeySet::load(&key, std::slice::from_ref(&key)).unwrap_err();
        assert!(matches!(err, IdentityError::DuplicateKey { .. }), "{err}");
    }

    #[test]
    fn hs256_keys_verify_but_are_never_published() {
        let dir = tempfile::tempdir().unwrap();
        let hs = source(dir.path(), Algorithm::HS256, 0);
        let es = source(dir.path(), Algorithm::ES256, 0);

        let alone = KeySet::load(&hs, &[]).unwrap();
        assert_eq!(&alone.jwks()[..], br#"{"keys":[]}"#);

        let mixed = KeySet::load(&hs, std::slice::from_ref(&es)).unwrap();
        let jwks: serde_json::Value = serde_json::from_slice(mixed.jwks()).unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0]["alg"], "ES256");
        assert!(!String::from_utf8_lossy(mixed.jwks()).contains(SECRET));
    }

    #[test]
    fn hs256_secret_must_be_present_and_at_least_32_bytes() {
        let with_secret = |secret: Option<&str>| KeySource {
            algorithm: Algorithm::HS256,
            key_file: None,
            secret: secret.map(str::to_owned),
        };
        let short = "0123456789abcdef0123456789abcde";
        assert!(matches!(
            KeySet::load(&with_secret(Some(short)), &[]),
            Err(IdentityError::SecretTooShort { len: 31 })
        ));
        assert!(matches!(
            KeySet::load(&with_secret(Some("")), &[]),
            Err(IdentityError::MissingSecret)
        ));
        assert!(matches!(
            KeySet::load(&with_secret(None), &[]),
            Err(IdentityError::MissingSecret)
        ));
        assert!(KeySet::load(&with_secret(Some(&format!("{short}f"))), &[]).is_ok());
    }

    #[test]
    fn hs256_kid_is_short_stable_and_reveals_nothing_of_the_secret() {
        let a = hs256_kid(SECRET.as_bytes());
        assert_eq!(a.len(), 16);
        assert_eq!(a, hs256_kid(SECRET.as_bytes()));
        assert_ne!(a, hs256_kid(b"another secret that is long enough!!"));
        assert!(!SECRET.contains(&a) && !a.contains(&SECRET[..8]));
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn key_file_errors_name_the_file_and_the_problem_but_never_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ed_pem = pem(Algorithm::EdDSA, 0);
        let ec_pem = pem(Algorithm::ES256, 0);
        let ed_body = ed_pem.lines().nth(1).unwrap();
        let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjAp\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let legacy_encrypted = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        let public_only = public_pem(Algorithm::ES256);
        let cases: Vec<(&str, Option<&str>, Algorithm, &str)> = vec![
            ("missing.pem", None, Algorithm::ES256, "cannot be read"),
            (
                "garbage.pem",
                Some("not a key at all"),
                Algorithm::ES256,
                "holds no PEM",
            ),
            (
                "public.pem",
                Some(&public_only),
                Algorithm::ES256,
                "holds no PEM",
            ),
            (
                "ed-as-es.pem",
                Some(ed_pem),
                Algorithm::ES256,
                "valid ES256 (P-256 EC) private key",
            ),
            (
                "ed-as-rs.pem",
                Some(ed_pem),
                Algorithm::RS256,
                "valid RS256 (RSA) private key",
            ),
            (
                "ec-as-ed.pem",
                Some(ec_pem),
                Algorithm::EdDSA,
                "valid EdDSA (Ed25519) private key",
            ),
            (
                "encrypted.pem",
                Some(encrypted),
                Algorithm::ES256,
                "encrypted",
            ),
            (
                "legacy.pem",
                Some(legacy_encrypted),
                Algorithm::RS256,
                "encrypted",
            ),
            (
                "bad-base64.pem",
                Some("-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n"),
                Algorithm::ES256,
                "base64",
            ),
        ];
        for (name, contents, algorithm, problem) in cases {
            let path = dir.path().join(name);
            if let Some(contents) = contents {
                std::fs::write(&path, contents).unwrap();
            }
            let key = KeySource {
                algorithm,
                key_file: Some(path.clone()),
                secret: None,
            };
            let err = KeySet::load(&key, &[]).unwrap_err();
            let shown = format!("{err} / {err:?}");
            assert!(
                shown.contains(&path.display().to_string()),
                "{name}: {shown}"
            );
            assert!(shown.contains(problem), "{name}: {shown}");
            assert!(
                !shown.contains(ed_body),
                "{name} leaks key material: {shown}"
            );
        }

        let no_file = KeySource {
            algorithm: Algorithm::EdDSA,
            key_file: None,
            secret: Some(SECRET.into()),
        };
        let err = KeySet::load(&no_file, &[]).unwrap_err();
        assert!(err.to_string().contains("needs `key_file`"), "{err}");
    }

    #[test]
    fn sec1_ec_and_pkcs1_rsa_key_files_are_accepted_as_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (_, ec_der) = private_key_block(pem(Algorithm::ES256, 0)).unwrap();
        let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &ec_der).unwrap();
        let sec1 = ec.private_key().as_der().unwrap();
        let (_, rsa_der) = private_key_block(pem(Algorithm::RS256, 0)).unwrap();
        let pkcs1 = pkcs1_from_pkcs8(&rsa_der);

        for (algorithm, label, der) in [
            (Algorithm::ES256, "EC PRIVATE KEY", sec1.as_ref()),
            (Algorithm::RS256, "RSA PRIVATE KEY", pkcs1),
        ] {
            let path = dir.path().join(format!("{algorithm}-legacy.pem"));
            // Some tools put a certificate first; the private key block is still found.
            let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
            std::fs::write(&path, format!("{cert}{}", encode_pem(label, der))).unwrap();
            let legacy = KeySet::load(
                &KeySource {
                    algorithm,
                    key_file: Some(path),
                    secret: None,
                },
                &[],
            )
            .unwrap();
            let pkcs8 = key_set(algorithm);
            assert_eq!(legacy.signing_kid(), pkcs8.signing_kid(), "{label}");
            let token = legacy.sign(&claims()).unwrap();
            assert!(pkcs8.verify(&token, ISSUER, AUDIENCE).is_ok(), "{label}");
        }
    }

    /// PKCS#8 wraps the PKCS#1 key in an OCTET STRING after the version and the algorithm
    /// identifier; good enough for the fixed layout of a generated 2048-bit key.
    fn pkcs1_from_pkcs8(der: &[u8]) -> &[u8] {
        let rsa_algorithm_id = [
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05,
            0x00,
        ];
        assert_eq!(&der[4..7], &[0x02, 0x01, 0x00], "version");
        assert_eq!(&der[7..22], &rsa_algorithm_id);
        assert_eq!(&der[22..24], &[0x04, 0x82], "octet string");
        let len = usize::from(der[24]) << 8 | usize::from(der[25]);
        &der[26..26 + len]
    }

    #[test]
    fn generated_keys_are_pkcs8_pem_and_hs256_asks_for_a_secret() {
        for algorithm in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
            let pem = pem(algorithm, 0);
            assert!(
                pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
                "{algorithm}"
            );
            assert!(pem.ends_with("-----END PRIVATE KEY-----\n"), "{algorithm}");
            assert!(pem.lines().all(|line| line.len() <= 64), "{algorithm}");
            assert_ne!(pem, self::pem(algorithm, 1), "{algorithm} keys are random");
        }
        let err = generate_pem(Algorithm::HS256).unwrap_err();
        assert!(err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let hs = source(dir.path(), Algorithm::HS256, 0);
        let shown = format!("{hs:?} {:?}", KeySet::load(&hs, &[]).unwrap());
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
    }
}

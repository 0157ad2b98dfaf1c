//! `verify_signature` and `sign`, as Envoy's crypto utility does them (BoringSSL's
//! `EVP_DigestVerify` / `EVP_DigestSign`: RSA with PKCS#1 v1.5 padding, ECDSA with DER
//! signatures), with aws-lc. The outcome goes back as Envoy's result message, with Envoy's error
//! texts; only malformed arguments are a status.

use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, ParsedPublicKey, RsaKeyPair};
use prost::Message;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};
use sluice_abi::Status;

/// `envoy.source.extensions.common.wasm.VerifySignatureArguments`.
#[derive(Clone, PartialEq, Message)]
struct VerifySignatureArguments {
    #[prost(string, tag = "1")]
    hash_function: String,
    #[prost(bytes = "vec", tag = "2")]
    public_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    signature: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    text: Vec<u8>,
    #[prost(string, tag = "5")]
    public_key_pem: String,
}

#[derive(Clone, PartialEq, Message)]
struct VerifySignatureResult {
    #[prost(bool, tag = "1")]
    result: bool,
    #[prost(string, tag = "2")]
    error: String,
}

/// `envoy.source.extensions.common.wasm.SignArguments`.
#[derive(Clone, PartialEq, Message)]
struct SignArguments {
    #[prost(string, tag = "1")]
    hash_function: String,
    #[prost(bytes = "vec", tag = "2")]
    private_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    text: Vec<u8>,
    #[prost(string, tag = "4")]
    private_key_pem: String,
}

#[derive(Clone, PartialEq, Message)]
struct SignResult {
    #[prost(bool, tag = "1")]
    result: bool,
    #[prost(bytes = "vec", tag = "2")]
    signature: Vec<u8>,
    #[prost(string, tag = "3")]
    error: String,
}

/// The hash functions Envoy knows (case-insensitive).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn named(name: &str) -> Option<Hash> {
        Some(match name.to_ascii_lowercase().as_str() {
            "sha1" => Hash::Sha1,
            "sha224" => Hash::Sha224,
            "sha256" => Hash::Sha256,
            "sha384" => Hash::Sha384,
            "sha512" => Hash::Sha512,
            _ => return None,
        })
    }
}

/// Exactly one of the DER and the PEM form, as Envoy requires (else `BAD_ARGUMENT`).
fn one_key<'a>(der: &'a [u8], pem: &'a str) -> Result<(&'a [u8], bool), Status> {
    match (der.is_empty(), pem.is_empty()) {
        (false, true) => Ok((der, false)),
        (true, false) => Ok((pem.as_bytes(), true)),
        _ => Err(Status::BadArgument),
    }
}

/// The verification algorithms aws-lc has for a hash, RSA first. BoringSSL takes any hash with
/// any key; aws-lc lacks RSA with SHA-224 and some curve/hash pairs.
fn verification_algorithms(hash: Hash) -> &'static [&'static dyn sig::VerificationAlgorithm] {
    match hash {
        Hash::Sha1 => &[
            &sig::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
            &sig::ECDSA_P256_SHA1_ASN1,
            &sig::ECDSA_P521_SHA1_ASN1,
        ],
        Hash::Sha224 => &[&sig::ECDSA_P521_SHA224_ASN1],
        Hash::Sha256 => &[
            &sig::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
            &sig::ECDSA_P256_SHA256_ASN1,
            &sig::ECDSA_P384_SHA256_ASN1,
            &sig::ECDSA_P521_SHA256_ASN1,
            &sig::ECDSA_P256K1_SHA256_ASN1,
        ],
        Hash::Sha384 => &[
            &sig::RSA_PKCS1_2048_8192_SHA384,
            &sig::ECDSA_P256_SHA384_ASN1,
            &sig::ECDSA_P384_SHA384_ASN1,
            &sig::ECDSA_P521_SHA384_ASN1,
        ],
        Hash::Sha512 => &[
            &sig::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
            &sig::ECDSA_P256_SHA512_ASN1,
            &sig::ECDSA_P384_SHA512_ASN1,
            &sig::ECDSA_P521_SHA512_ASN1,
        ],
    }
}

pub(super) fn verify_signature(arguments: &[u8]) -> Result<Vec<u8>, Status> {
    let arguments = VerifySignatureArguments::decode(arguments).map_err(|_| Status::BadArgument)?;
    let (key, pem) = one_key(&arguments.public_key, &arguments.public_key_pem)?;
    let outcome = verify(
        &arguments.hash_function,
        key,
        pem,
        &arguments.signature,
        &arguments.text,
    );
    let result = match outcome {
        Ok(()) => VerifySignatureResult {
            result: true,
            error: String::new(),
        },
        Err(error) => VerifySignatureResult {
            result: false,
            error,
        },
    };
    Ok(result.encode_to_vec())
}

fn verify(hash: &str, key: &[u8], pem: bool, signature: &[u8], text: &[u8]) -> Result<(), String> {
    let named = Hash::named(hash).ok_or_else(|| format!("{hash} is not supported."))?;
    let key = if pem {
        SubjectPublicKeyInfoDer::from_pem_slice(key)
            .map(|k| k.as_ref().to_vec())
            .unwrap_or_default()
    } else {
        key.to_vec()
    };
    let parsed = verification_algorithms(named)
        .iter()
        .find_map(|algorithm| ParsedPublicKey::new(*algorithm, &key).ok());
    let Some(parsed) = parsed else {
        return Err(if parses_for_another_hash(&key) {
            format!("{hash} with this key type is not supported.")
        } else {
            "Failed to initialize digest verify.".into()
        });
    };
    parsed
        .verify_sig(text, signature)
        .map_err(|_| "Failed to verify digest. Error code: 0".into())
}

/// Whether the key is one aws-lc reads with some hash (so only the pairing is missing).
fn parses_for_another_hash(key: &[u8]) -> bool {
    [Hash::Sha1, Hash::Sha256, Hash::Sha384, Hash::Sha512]
        .iter()
        .flat_map(|hash| verification_algorithms(*hash))
        .any(|algorithm| ParsedPublicKey::new(*algorithm, key).is_ok())
}

pub(super) fn sign(arguments: &[u8]) -> Result<Vec<u8>, Status> {
    let arguments = SignArguments::decode(arguments).map_err(|_| Status::BadArgument)?;
    let (key, pem) = one_key(&arguments.private_key, &arguments.private_key_pem)?;
    let result = match sign_text(&arguments.hash_function, key, pem, &arguments.text) {
        Ok(signature) => SignResult {
            result: true,
            signature,
            error: String::new(),
        },
        Err(error) => SignResult {
            result: false,
            signature: Vec::new(),
            error,
        },
    };
    Ok(result.encode_to_vec())
}

/// A private key as Envoy reads one: DER is PKCS#8; PEM is PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
enum PrivateKey<'a> {
    Pkcs8(&'a [u8]),
    Pkcs1(&'a [u8]),
    Sec1(&'a [u8]),
}

impl PrivateKey<'_> {
    fn rsa(&self) -> Option<RsaKeyPair> {
        match self {
            PrivateKey::Pkcs8(der) => RsaKeyPair::from_pkcs8(der).ok(),
            PrivateKey::Pkcs1(der) => RsaKeyPair::from_der(der).ok(),
            PrivateKey::Sec1(_) => None,
        }
    }

    fn ecdsa(&self, algorithm: &'static sig::EcdsaSigningAlgorithm) -> Option<EcdsaKeyPair> {
        match self {
            PrivateKey::Pkcs8(der) => EcdsaKeyPair::from_pkcs8(algorithm, der).ok(),
            PrivateKey::Sec1(der) => EcdsaKeyPair::from_private_key_der(algorithm, der).ok(),
            PrivateKey::Pkcs1(_) => None,
        }
    }
}

/// The ECDSA signing algorithms aws-lc has for a hash.
fn signing_algorithms(hash: Hash) -> &'static [&'static sig::EcdsaSigningAlgorithm] {
    match hash {
        Hash::Sha256 => &[
            &sig::ECDSA_P256_SHA256_ASN1_SIGNING,
            &sig::ECDSA_P521_SHA256_ASN1_SIGNING,
            &sig::ECDSA_P256K1_SHA256_ASN1_SIGNING,
        ],
        Hash::Sha384 => &[
            &sig::ECDSA_P384_SHA384_ASN1_SIGNING,
            &sig::ECDSA_P521_SHA384_ASN1_SIGNING,
        ],
        Hash::Sha512 => &[&sig::ECDSA_P521_SHA512_ASN1_SIGNING],
        Hash::Sha224 => &[&sig::ECDSA_P521_SHA224_ASN1_SIGNING],
        Hash::Sha1 => &[],
    }
}

fn sign_text(hash: &str, key: &[u8], pem: bool, text: &[u8]) -> Result<Vec<u8>, String> {
    let named = Hash::named(hash).ok_or_else(|| format!("{hash} is not supported."))?;
    let invalid = || "Invalid key type: private key required for signing operation.".to_string();
    let unsupported = || format!("{hash} with this key type is not supported.");
    let decoded;
    let key = if pem {
        decoded = PrivateKeyDer::from_pem_slice(key).map_err(|_| invalid())?;
        match &decoded {
            PrivateKeyDer::Pkcs8(k) => PrivateKey::Pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => PrivateKey::Pkcs1(k.secret_pkcs1_der()),
            PrivateKeyDer::Sec1(k) => PrivateKey::Sec1(k.secret_sec1_der()),
            _ => return Err(invalid()),
        }
    } else {
        PrivateKey::Pkcs8(key)
    };
    let random = aws_lc_rs::rand::SystemRandom::new();
    if let Some(rsa) = key.rsa() {
        let encoding: &'static dyn sig::RsaEncoding = match named {
            Hash::Sha256 => &sig::RSA_PKCS1_SHA256,
            Hash::Sha384 => &sig::RSA_PKCS1_SHA384,
            Hash::Sha512 => &sig::RSA_PKCS1_SHA512,
            Hash::Sha1 | Hash::Sha224 => return Err(unsupported()),
        };
        let mut signature = vec![0; rsa.public_modulus_len()];
        rsa.sign(encoding, &random, text, &mut signature)
            .map_err(|_| "Failed to sign data.".to_string())?;
        return Ok(signature);
    }
    let Some(ecdsa) = signing_algorithms(named)
        .iter()
        .find_map(|algorithm| key.ecdsa(algorithm))
    else {
        let another_curve = [Hash::Sha224, Hash::Sha256, Hash::Sha384, Hash::Sha512]
            .iter()
            .flat_map(|hash| signing_algorithms(*hash))
            .any(|algorithm| key.ecdsa(algorithm).is_some());
        return Err(if another_curve {
            unsupported()
        } else {
            invalid()
        });
    };
    ecdsa
        .sign(&random, text)
        .map(|signature| signature.as_ref().to_vec())
        .map_err(|_| "Failed to sign data.".to_string())
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair;

    use super::*;

    fn verified(arguments: &VerifySignatureArguments) -> VerifySignatureResult {
        let result = verify_signature(&arguments.encode_to_vec()).unwrap();
        VerifySignatureResult::decode(result.as_slice()).unwrap()
    }

    fn signed(hash: &str, private_key: Vec<u8>) -> SignResult {
        let arguments = SignArguments {
            hash_function: hash.into(),
            private_key,
            text: b"hello".to_vec(),
            private_key_pem: String::new(),
        };
        SignResult::decode(sign(&arguments.encode_to_vec()).unwrap().as_slice()).unwrap()
    }

    /// An ECDSA key made here signs and verifies, and what fails says what Envoy says.
    #[test]
    fn signatures_round_trip_and_fail_with_envoys_texts() {
        let random = aws_lc_rs::rand::SystemRandom::new();
        let algorithm = &sig::ECDSA_P256_SHA256_ASN1_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(algorithm, &random).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(algorithm, pkcs8.as_ref()).unwrap();
        let public = pair.public_key().as_der().unwrap().as_ref().to_vec();
        let signature = signed("SHA256", pkcs8.as_ref().to_vec());
        assert!(signature.result, "{}", signature.error);
        let arguments = |text: &[u8], hash: &str, key: &[u8]| VerifySignatureArguments {
            hash_function: hash.into(),
            public_key: key.to_vec(),
            signature: signature.signature.clone(),
            text: text.to_vec(),
            public_key_pem: String::new(),
        };
        assert!(verified(&arguments(b"hello", "sha256", &public)).result);
        let wrong = verified(&arguments(b"hellx", "sha256", &public));
        assert_eq!(
            (wrong.result, wrong.error.as_str()),
            (false, "Failed to verify digest. Error code: 0")
        );
        let md5 = verified(&arguments(b"hello", "md5", &public));
        assert_eq!(md5.error, "md5 is not supported.");
        let garbage = verified(&arguments(b"hello", "sha256", b"garbage"));
        assert_eq!(garbage.error, "Failed to initialize digest verify.");
        let both = VerifySignatureArguments {
            public_key_pem: "x".into(),
            ..arguments(b"hello", "sha256", &public)
        };
        assert_eq!(
            verify_signature(&both.encode_to_vec()),
            Err(Status::BadArgument)
        );
        assert_eq!(verify_signature(b"\xff"), Err(Status::BadArgument));
        assert_eq!(
            signed("sha256", b"garbage".to_vec()).error,
            "Invalid key type: private key required for signing operation."
        );
        assert_eq!(
            signed("md5", pkcs8.as_ref().to_vec()).error,
            "md5 is not supported."
        );
    }
}

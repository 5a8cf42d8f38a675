//! The opt-in secure channel: payloads encrypted (AES-256-GCM) or signed (HMAC-SHA256) between
//! the engine and one client, under keys agreed in-band with ephemeral ECDH P-256 after the
//! `welcome` (docs/PROTOCOL.md, "Secure channel").
//!
//! It adds nothing over TLS between the same two ends. It is for deployments where something
//! between them terminates TLS (a CDN, a load balancer, a corporate proxy) and must not read
//! (`encrypt`) or alter (`sign`) what passes. Against a middlebox that only reads, ephemeral
//! keys suffice; against one that may rewrite the handshake, the client must pin the server's
//! identity key ([`IdentityKey`]), which signs every handshake.
//!
//! Both ends use the same code: the engine answers with [`accept`], a Rust or Python client
//! starts with [`ClientHandshake`]; each then holds a [`Channel`] that seals what it sends and
//! opens what it receives.
//!
//! ```
//! use weft_server::secure::{self, ClientHandshake, Mode};
//!
//! let client = ClientHandshake::new(Mode::Encrypt).unwrap();
//! let accepted = secure::accept(Mode::Encrypt, client.public_key(), "session-1", None).unwrap();
//! let mut client = client.finish(&accepted.public_key, "session-1", None, None).unwrap();
//! let mut server = accepted.channel;
//!
//! let frame = server.seal(br#"{"type":"event"}"#);
//! assert_eq!(client.open(&frame).unwrap(), br#"{"type":"event"}"#);
//! // The same frame again is a replay: refused.
//! assert!(client.open(&frame).is_err());
//! ```

use std::fmt;

use ring::rand::SystemRandom;
use ring::{aead, agreement, hkdf, hmac, signature};

/// Bytes of the sequence number that starts every sealed frame.
pub const SEQ_LEN: usize = 8;

/// The most a sealed frame adds to its message (`sign`: the sequence number and a 32-byte tag).
pub const MAX_OVERHEAD: usize = SEQ_LEN + 32;

/// What the channel does to each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// AES-256-GCM: confidential and authenticated.
    Encrypt,
    /// HMAC-SHA256: readable by whatever is between, but not alterable.
    Sign,
}

impl Mode {
    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Encrypt => "encrypt",
            Mode::Sign => "sign",
        }
    }

    /// Bytes a sealed frame adds to its message.
    pub fn overhead(self) -> usize {
        SEQ_LEN
            + match self {
                Mode::Encrypt => aead::AES_256_GCM.tag_len(),
                Mode::Sign => 32,
            }
    }
}

impl std::str::FromStr for Mode {
    type Err = SecureError;

    fn from_str(s: &str) -> Result<Self, SecureError> {
        match s {
            "encrypt" => Ok(Mode::Encrypt),
            "sign" => Ok(Mode::Sign),
            _ => Err(SecureError(format!("unknown secure mode {s:?} (encrypt, sign)"))),
        }
    }
}

/// Whether the engine offers the secure channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurePolicy {
    /// `secure` is refused (error 4012).
    Off,
    /// A client may ask for it (the default: it costs nothing until asked).
    #[default]
    Allow,
    /// Every request before `secure` is refused (error 4012): nothing is sent in clear but
    /// the `welcome` and the handshake.
    Require,
}

impl SecurePolicy {
    /// The name in `welcome` and on the command line (`None` when off: `welcome` omits it).
    pub fn offered(self) -> Option<&'static str> {
        match self {
            SecurePolicy::Off => None,
            SecurePolicy::Allow => Some("allow"),
            SecurePolicy::Require => Some("require"),
        }
    }
}

impl std::str::FromStr for SecurePolicy {
    type Err = SecureError;

    fn from_str(s: &str) -> Result<Self, SecureError> {
        match s {
            "off" => Ok(SecurePolicy::Off),
            "allow" => Ok(SecurePolicy::Allow),
            "require" => Ok(SecurePolicy::Require),
            _ => Err(SecureError(format!("unknown secure policy {s:?} (off, allow, require)"))),
        }
    }
}

/// Why a handshake or a frame was refused. The message never holds key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureError(pub String);

impl fmt::Display for SecureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SecureError {}

fn err(m: &str) -> SecureError {
    SecureError(m.to_owned())
}

/// What both ends sign and derive their keys from: the protocol label, the mode, the session
/// (so a handshake cannot be moved to another connection) and both public keys.
fn transcript(mode: Mode, session: &str, client_key: &[u8], server_key: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(64 + session.len() + client_key.len() + server_key.len());
    t.extend_from_slice(b"weft.v1.secure\0");
    t.extend_from_slice(mode.name().as_bytes());
    t.push(0);
    t.extend_from_slice(session.as_bytes());
    t.push(0);
    t.extend_from_slice(client_key);
    t.extend_from_slice(server_key);
    t
}

/// The two directions' keys: HKDF-SHA256 over the ECDH secret, salted with the transcript.
fn derive(shared: &[u8], transcript: &[u8], mode: Mode) -> ([u8; 32], [u8; 32]) {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, transcript).extract(shared);
    let expand = |dir: &str| {
        let info = format!("weft.v1 {} {dir}", mode.name());
        let info = [info.as_bytes()];
        let mut k = [0u8; 32];
        prk.expand(&info, hkdf::HKDF_SHA256).and_then(|okm| okm.fill(&mut k)).expect("32 bytes is a valid HKDF length");
        k
    };
    (expand("c2s"), expand("s2c"))
}

enum Key {
    /// Boxed: the AES key schedule is 544 bytes, the HMAC key much less.
    Aead(Box<aead::LessSafeKey>),
    Hmac(hmac::Key),
}

impl Key {
    fn new(mode: Mode, bytes: &[u8; 32]) -> Self {
        match mode {
            Mode::Encrypt => Key::Aead(Box::new(aead::LessSafeKey::new(
                aead::UnboundKey::new(&aead::AES_256_GCM, bytes).expect("32 bytes is an AES-256 key"),
            ))),
            Mode::Sign => Key::Hmac(hmac::Key::new(hmac::HMAC_SHA256, bytes)),
        }
    }
}

fn nonce(seq: u64) -> aead::Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    aead::Nonce::assume_unique_for_key(n)
}

/// One end of an established channel: seals outgoing messages and opens incoming ones, each
/// direction numbered from 0 with no gap.
pub struct Channel {
    mode: Mode,
    send: Key,
    recv: Key,
    send_seq: u64,
    recv_seq: u64,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("mode", &self.mode)
            .field("sent", &self.send_seq)
            .field("received", &self.recv_seq)
            .finish_non_exhaustive()
    }
}

impl Channel {
    fn new(mode: Mode, send: &[u8; 32], recv: &[u8; 32]) -> Self {
        Self { mode, send: Key::new(mode, send), recv: Key::new(mode, recv), send_seq: 0, recv_seq: 0 }
    }

    /// The channel's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Seal one message into a frame: its sequence number (8 bytes, big-endian), then the
    /// message encrypted (`encrypt`) or as is (`sign`), then the tag.
    pub fn seal(&mut self, message: &[u8]) -> Vec<u8> {
        let seq = self.send_seq;
        self.send_seq += 1;
        let mut out = Vec::with_capacity(self.mode.overhead() + message.len());
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(message);
        match &self.send {
            Key::Aead(k) => {
                let tag = k
                    .seal_in_place_separate_tag(nonce(seq), aead::Aad::empty(), &mut out[SEQ_LEN..])
                    .expect("a message within the AEAD's length limit");
                out.extend_from_slice(tag.as_ref());
            }
            Key::Hmac(k) => {
                let tag = hmac::sign(k, &out);
                out.extend_from_slice(tag.as_ref());
            }
        }
        out
    }

    /// Open one frame: the message it carries, or an error when it is not the next frame in
    /// sequence (replayed, reordered or dropped) or was altered or sealed under another key.
    /// After an error the channel is not to be used again.
    pub fn open(&mut self, frame: &[u8]) -> Result<Vec<u8>, SecureError> {
        if frame.len() < self.mode.overhead() {
            return Err(err("sealed frame too short"));
        }
        let seq = u64::from_be_bytes(frame[..SEQ_LEN].try_into().expect("8 bytes"));
        if seq != self.recv_seq {
            return Err(SecureError(format!("sealed frame out of sequence: {seq}, expected {}", self.recv_seq)));
        }
        let message = match &self.recv {
            Key::Aead(k) => {
                let mut body = frame[SEQ_LEN..].to_vec();
                let n = k
                    .open_in_place(nonce(seq), aead::Aad::empty(), &mut body)
                    .map_err(|_| err("sealed frame failed authentication"))?
                    .len();
                body.truncate(n);
                body
            }
            Key::Hmac(k) => {
                let (signed, tag) = frame.split_at(frame.len() - 32);
                hmac::verify(k, signed, tag).map_err(|_| err("sealed frame failed authentication"))?;
                signed[SEQ_LEN..].to_vec()
            }
        };
        self.recv_seq += 1;
        Ok(message)
    }
}

/// The server's long-lived identity: a P-256 key that signs each handshake's transcript, so a
/// client that pins its public key detects a middlebox that swaps the ephemeral keys.
pub struct IdentityKey {
    pair: signature::EcdsaKeyPair,
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKey").field("public", &self.public_key_base64()).finish_non_exhaustive()
    }
}

impl IdentityKey {
    /// From a PKCS#8 P-256 private key, DER or PEM (`-----BEGIN PRIVATE KEY-----`, as
    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes).
    pub fn from_pkcs8(bytes: &[u8]) -> Result<Self, SecureError> {
        use rustls_pki_types::PrivatePkcs8KeyDer;
        use rustls_pki_types::pem::PemObject;
        let der: Vec<u8> = if bytes.starts_with(b"-----") {
            PrivatePkcs8KeyDer::from_pem_slice(bytes)
                .map_err(|e| SecureError(format!("not a PEM PKCS#8 private key: {e}")))?
                .secret_pkcs8_der()
                .to_vec()
        } else {
            bytes.to_vec()
        };
        let pair = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
            &SystemRandom::new(),
        )
        .map_err(|e| SecureError(format!("not a PKCS#8 P-256 private key: {e}")))?;
        Ok(Self { pair })
    }

    /// A fresh random key, returned with its PKCS#8 DER (for tests and `weft keygen`-like tools).
    pub fn generate() -> Result<(Self, Vec<u8>), SecureError> {
        let rng = SystemRandom::new();
        let der = signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| err("could not generate a key"))?;
        let key = Self::from_pkcs8(der.as_ref())?;
        Ok((key, der.as_ref().to_vec()))
    }

    /// The public key clients pin: the uncompressed P-256 point (65 bytes).
    pub fn public_key(&self) -> &[u8] {
        use ring::signature::KeyPair;
        self.pair.public_key().as_ref()
    }

    /// [`public_key`](Self::public_key) in standard base64, as clients take it.
    pub fn public_key_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.public_key())
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SecureError> {
        let sig = self.pair.sign(&SystemRandom::new(), message).map_err(|_| err("signing failed"))?;
        Ok(sig.as_ref().to_vec())
    }
}

/// The server's side of a handshake that succeeded.
#[derive(Debug)]
pub struct Accepted {
    /// The server's channel.
    pub channel: Channel,
    /// The server's ephemeral public key (65 bytes), for the `secured` reply.
    pub public_key: Vec<u8>,
    /// The identity key's signature of the transcript (64 bytes, r‖s), when the server has one.
    pub signature: Option<Vec<u8>>,
}

/// Answer a client's `secure` request: agree on keys with `client_key` (an uncompressed P-256
/// point) for `session`, signing the transcript with `identity` if given.
pub fn accept(
    mode: Mode,
    client_key: &[u8],
    session: &str,
    identity: Option<&IdentityKey>,
) -> Result<Accepted, SecureError> {
    // Not even a key pair for a key that cannot be a point (the full check is ring's, below).
    if client_key.len() != 65 || client_key[0] != 4 {
        return Err(err("key is not an uncompressed P-256 point"));
    }
    let rng = SystemRandom::new();
    let private = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
        .map_err(|_| err("could not generate a key"))?;
    let public_key = private.compute_public_key().map_err(|_| err("could not generate a key"))?.as_ref().to_vec();
    let t = transcript(mode, session, client_key, &public_key);
    let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, client_key);
    let (c2s, s2c) = agreement::agree_ephemeral(private, &peer, |shared| derive(shared, &t, mode))
        .map_err(|_| err("key is not an uncompressed P-256 point"))?;
    let signature = identity.map(|k| k.sign(&t)).transpose()?;
    Ok(Accepted { channel: Channel::new(mode, &s2c, &c2s), public_key, signature })
}

/// The client's side of a handshake: an ephemeral key pair, sent in `secure`, finished with the
/// server's `secured` answer.
pub struct ClientHandshake {
    mode: Mode,
    private: agreement::EphemeralPrivateKey,
    public: Vec<u8>,
}

impl fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientHandshake").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl ClientHandshake {
    /// A fresh ephemeral key pair.
    pub fn new(mode: Mode) -> Result<Self, SecureError> {
        let rng = SystemRandom::new();
        let private = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
            .map_err(|_| err("could not generate a key"))?;
        let public = private.compute_public_key().map_err(|_| err("could not generate a key"))?.as_ref().to_vec();
        Ok(Self { mode, private, public })
    }

    /// The public key to send (65 bytes, an uncompressed P-256 point).
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// Finish with the server's `key` and `signature` for `session`. With `pinned` (the
    /// server's identity public key), a missing or wrong signature is refused.
    pub fn finish(
        self,
        server_key: &[u8],
        session: &str,
        signature: Option<&[u8]>,
        pinned: Option<&[u8]>,
    ) -> Result<Channel, SecureError> {
        let t = transcript(self.mode, session, &self.public, server_key);
        if let Some(pinned) = pinned {
            let sig = signature.ok_or_else(|| err("the server did not sign the handshake (identity key pinned)"))?;
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, pinned)
                .verify(&t, sig)
                .map_err(|_| err("the handshake's signature does not match the pinned server key"))?;
        }
        let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, server_key);
        let mode = self.mode;
        let (c2s, s2c) = agreement::agree_ephemeral(self.private, &peer, |shared| derive(shared, &t, mode))
            .map_err(|_| err("server key is not an uncompressed P-256 point"))?;
        Ok(Channel::new(mode, &c2s, &s2c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(mode: Mode, identity: Option<&IdentityKey>) -> (Channel, Channel) {
        let c = ClientHandshake::new(mode).unwrap();
        let a = accept(mode, c.public_key(), "s1", identity).unwrap();
        let pinned = identity.map(IdentityKey::public_key);
        let client = c.finish(&a.public_key, "s1", a.signature.as_deref(), pinned).unwrap();
        (client, a.channel)
    }

    #[test]
    fn both_modes_round_trip_in_both_directions() {
        for mode in [Mode::Encrypt, Mode::Sign] {
            let (mut c, mut s) = pair(mode, None);
            for i in 0..3 {
                let m = format!("message {i}");
                let f = c.seal(m.as_bytes());
                assert_eq!(f.len(), m.len() + mode.overhead());
                assert_eq!(s.open(&f).unwrap(), m.as_bytes());
                let f = s.seal(m.as_bytes());
                assert_eq!(c.open(&f).unwrap(), m.as_bytes());
            }
            // Encrypted frames do not carry the message in clear; signed ones do.
            let f = s.seal(b"secret words");
            assert_eq!(f.windows(12).any(|w| w == b"secret words"), mode == Mode::Sign);
        }
    }

    #[test]
    fn tampering_replay_reordering_and_wrong_keys_are_refused() {
        for mode in [Mode::Encrypt, Mode::Sign] {
            let (mut c, mut s) = pair(mode, None);
            let f0 = s.seal(b"zero");
            let f1 = s.seal(b"one");
            // Out of order.
            assert!(c.open(&f1).unwrap_err().0.contains("sequence"));
            // One bit flipped anywhere after the sequence number.
            for i in SEQ_LEN..f0.len() {
                let mut t = f0.clone();
                t[i] ^= 1;
                assert!(c.open(&t).is_err(), "{mode:?} byte {i}");
            }
            // A forged sequence number.
            let mut t = f1.clone();
            t[..SEQ_LEN].copy_from_slice(&0u64.to_be_bytes());
            assert!(c.open(&t).is_err());
            assert_eq!(c.open(&f0).unwrap(), b"zero");
            // Replayed.
            assert!(c.open(&f0).is_err());
            assert_eq!(c.open(&f1).unwrap(), b"one");
            // Truncated.
            assert!(c.open(&f1[..5]).is_err());
            // Sealed on another connection.
            let (mut other, mut other_s) = pair(mode, None);
            let _ = other.seal(b"x");
            let f = other_s.seal(b"hello");
            let (mut c2, _) = pair(mode, None);
            assert!(c2.open(&f).is_err());
            // A frame sealed by the client is not accepted back by the client (directions
            // have their own keys).
            let mine = c2.seal(b"echo");
            assert!(c2.open(&mine).is_err());
        }
    }

    #[test]
    fn pinned_identity_detects_a_swapped_handshake() {
        let (id, der) = IdentityKey::generate().unwrap();
        assert_eq!(IdentityKey::from_pkcs8(&der).unwrap().public_key(), id.public_key());
        // PEM, wrapped at 64 columns as openssl writes it.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"));
        assert_eq!(IdentityKey::from_pkcs8(pem.as_bytes()).unwrap().public_key(), id.public_key());
        let _ = pair(Mode::Encrypt, Some(&id));
        // A middlebox answers with its own key: unsigned, or signed by another identity.
        let c = ClientHandshake::new(Mode::Encrypt).unwrap();
        let mitm = accept(Mode::Encrypt, c.public_key(), "s1", None).unwrap();
        let e = c.finish(&mitm.public_key, "s1", None, Some(id.public_key())).unwrap_err();
        assert!(e.0.contains("did not sign"), "{e}");
        let (other, _) = IdentityKey::generate().unwrap();
        let c = ClientHandshake::new(Mode::Encrypt).unwrap();
        let mitm = accept(Mode::Encrypt, c.public_key(), "s1", Some(&other)).unwrap();
        assert!(c.finish(&mitm.public_key, "s1", mitm.signature.as_deref(), Some(id.public_key())).is_err());
        // The genuine signature, moved to another session, does not verify.
        let c = ClientHandshake::new(Mode::Encrypt).unwrap();
        let a = accept(Mode::Encrypt, c.public_key(), "s1", Some(&id)).unwrap();
        assert!(c.finish(&a.public_key, "s2", a.signature.as_deref(), Some(id.public_key())).is_err());
        // Without pinning the client cannot tell (that is what pinning is for).
        let c = ClientHandshake::new(Mode::Encrypt).unwrap();
        let mitm = accept(Mode::Encrypt, c.public_key(), "s1", None).unwrap();
        assert!(c.finish(&mitm.public_key, "s1", None, None).is_ok());
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(accept(Mode::Encrypt, b"short", "s", None).is_err());
        assert!(accept(Mode::Encrypt, &[4u8; 65], "s", None).is_err());
        let c = ClientHandshake::new(Mode::Sign).unwrap();
        assert!(c.finish(&[0u8; 65], "s", None, None).is_err());
        assert!(IdentityKey::from_pkcs8(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
        assert!(IdentityKey::from_pkcs8(b"junk").is_err());
    }

    #[test]
    fn mode_names() {
        assert_eq!("encrypt".parse::<Mode>().unwrap(), Mode::Encrypt);
        assert_eq!("sign".parse::<Mode>().unwrap(), Mode::Sign);
        assert!("rot13".parse::<Mode>().is_err());
    }
}

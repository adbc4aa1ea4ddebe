//! Public ids: opaque to everyone, yet decoded without an index.
//!
//! Internally a request is a sequential `u64` (sled's `generate_id`) and a dead letter is
//! `dead_ms ‖ seq`: good keys, bad public ids (they tell a tenant how many requests other
//! tenants made, in what order, and on which server). So every id a client sees is the
//! internal one run through a keyed permutation, a Feistel network whose round function is
//! SHA-256 keyed by a per-store secret (`meta/id_key`, 32 random bytes):
//!
//! - a channel id is a version-4 UUID whose 122 free bits are the permutation of
//!   `request id ‖ 58 random bits` (61-bit halves), so it decodes to its request id (the
//!   lookup then checks the whole channel id against the record) and no two share a bit
//!   pattern that says which server or which order;
//! - a dead-letter id (`dlq_…`) and a list cursor (`cur_…`) are the permutation of their
//!   16 key bytes (64-bit halves).
//!
//! With a pseudorandom round function, four rounds already make a strong pseudorandom
//! permutation (Luby–Rackoff) up to about 2^(half/2) ids; six are used. Each round is one
//! SHA-256 block (SHA-NI here), see `benches/hot.rs` for the cost.

use sha2::{Digest, Sha256};

use crate::job::{ChannelId, ProjectId};

const ROUNDS: u8 = 6;

/// The keyed permutations of one store.
#[derive(Clone)]
pub struct IdKey {
    key: [u8; 32],
}

impl IdKey {
    pub fn new(key: [u8; 32]) -> IdKey {
        IdKey { key }
    }

    /// The id a cluster gives the project called `name`: the same on every node, so two
    /// nodes creating it at once write one key (`create` lets one of them) and a name
    /// names one project. Keyed, so it tells nothing about other ids.
    pub fn project_of_name(&self, name: &str) -> ProjectId {
        let mut hasher = Sha256::new();
        hasher.update(self.key);
        hasher.update(b"project\0");
        hasher.update(name.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&hasher.finalize()[..16]);
        id[6] = (id[6] & 0x0f) | 0x40;
        id[8] = (id[8] & 0x3f) | 0x80;
        ProjectId::from_bytes(id)
    }

    fn round(&self, round: u8, width: u8, half: u64) -> u64 {
        let mut hasher = Sha256::new();
        hasher.update(self.key);
        hasher.update([round, width]);
        hasher.update(half.to_le_bytes());
        let digest = hasher.finalize();
        u64::from_le_bytes(digest[..8].try_into().unwrap_or_default()) & mask(width)
    }

    /// The permutation of `(left, right)`, each `width` bits.
    fn encrypt(&self, width: u8, (mut left, mut right): (u64, u64)) -> (u64, u64) {
        for round in 0..ROUNDS {
            (left, right) = (right, left ^ self.round(round, width, right));
        }
        (left, right)
    }

    fn decrypt(&self, width: u8, (mut left, mut right): (u64, u64)) -> (u64, u64) {
        for round in (0..ROUNDS).rev() {
            (left, right) = (right ^ self.round(round, width, left), left);
        }
        (left, right)
    }

    /// A channel id for request `id`: a UUID v4 (version and variant bits set) carrying
    /// the permutation of `id ‖ noise` (the low 58 bits of `noise`).
    pub fn channel_id(&self, id: u64, noise: u64) -> ChannelId {
        let plain = (u128::from(id) << 58) | u128::from(noise & mask(58));
        let (left, right) = self.encrypt(61, split(plain, 61));
        let bits = (u128::from(left) << 61) | u128::from(right);
        // 122 bits around the 4 version bits (48..52) and the 2 variant bits (64..66).
        let high = (bits >> 74) << 80; // 48 bits
        let middle = ((bits >> 62) & 0xfff) << 64; // 12 bits
        let low = bits & ((1u128 << 62) - 1); // 62 bits
        let uuid = high | (0x4u128 << 76) | middle | (0b10u128 << 62) | low;
        ChannelId::from_bytes(uuid.to_be_bytes())
    }

    /// The request id a channel id was made from (not yet checked against the record).
    pub fn request_of_channel(&self, channel: &ChannelId) -> u64 {
        let uuid = u128::from_be_bytes(*channel.as_bytes());
        let high = uuid >> 80;
        let middle = (uuid >> 64) & 0xfff;
        let low = uuid & ((1u128 << 62) - 1);
        let bits = (high << 74) | (middle << 62) | low;
        let (left, right) = self.decrypt(61, split(bits, 61));
        let plain = (u128::from(left) << 61) | u128::from(right);
        (plain >> 58) as u64
    }

    /// 16 key bytes as 32 opaque hex digits.
    pub fn seal(&self, plain: [u8; 16]) -> String {
        let (left, right) = self.encrypt(64, split(u128::from_be_bytes(plain), 64));
        format!("{left:016x}{right:016x}")
    }

    /// The inverse of [`IdKey::seal`]; `None` unless `hex` is 32 hex digits.
    pub fn open(&self, hex: &str) -> Option<[u8; 16]> {
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let left = u64::from_str_radix(&hex[..16], 16).ok()?;
        let right = u64::from_str_radix(&hex[16..], 16).ok()?;
        let (left, right) = self.decrypt(64, (left, right));
        Some(((u128::from(left) << 64) | u128::from(right)).to_be_bytes())
    }
}

fn mask(width: u8) -> u64 {
    if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    }
}

fn split(bits: u128, width: u8) -> (u64, u64) {
    (
        (bits >> width) as u64 & mask(width),
        bits as u64 & mask(width),
    )
}

/// Two `u64`s as the 16 big-endian bytes that [`IdKey::seal`] takes.
pub fn pair(a: u64, b: u64) -> [u8; 16] {
    ((u128::from(a) << 64) | u128::from(b)).to_be_bytes()
}

/// The inverse of [`pair`].
pub fn unpair(bytes: [u8; 16]) -> (u64, u64) {
    let n = u128::from_be_bytes(bytes);
    ((n >> 64) as u64, n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> IdKey {
        IdKey::new([byte; 32])
    }

    /// A channel id decodes to its request id, for ids at the edges and in between, and
    /// reads as a version-4 UUID with the RFC 4122 variant.
    #[test]
    fn channel_ids_round_trip_as_uuid_v4() {
        let k = key(7);
        for id in [
            0,
            1,
            2,
            1 << 32,
            u64::MAX - 1,
            u64::MAX,
            0x0123_4567_89ab_cdef,
        ] {
            for noise in [0, 1, u64::MAX] {
                let channel = k.channel_id(id, noise);
                let uuid = uuid::Uuid::from_bytes(*channel.as_bytes());
                assert_eq!(uuid.get_version_num(), 4, "{uuid}");
                assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{uuid}");
                assert_eq!(k.request_of_channel(&channel), id);
            }
        }
    }

    /// Sealed 16-byte keys open to themselves; a wrong key or a malformed text does not
    /// give them back.
    #[test]
    fn sealed_ids_round_trip() {
        let k = key(1);
        for (a, b) in [(0, 0), (1_700_000_000_000, 42), (u64::MAX, u64::MAX)] {
            let sealed = k.seal(pair(a, b));
            assert_eq!(sealed.len(), 32);
            assert_eq!(k.open(&sealed).map(unpair), Some((a, b)));
            assert_ne!(key(2).open(&sealed).map(unpair), Some((a, b)));
        }
        assert_eq!(k.open("xyz"), None);
        assert_eq!(k.open(&"g".repeat(32)), None);
    }

    /// Consecutive ids share no bit pattern: over 4,096 consecutive request ids, every one
    /// of the 122 free bits of the channel ids is set in 40–60 % of them, and so is every
    /// bit of sealed consecutive keys.
    #[test]
    fn consecutive_ids_look_random() {
        let k = key(9);
        let n = 4096;
        let mut ones = [0u32; 128];
        let mut sealed_ones = [0u32; 128];
        for id in 1000..1000 + n {
            let bits = u128::from_be_bytes(*k.channel_id(id, 0).as_bytes());
            let sealed = u128::from_str_radix(&k.seal(pair(1_700_000_000_000, id)), 16).unwrap();
            for (i, (o, s)) in ones.iter_mut().zip(sealed_ones.iter_mut()).enumerate() {
                *o += ((bits >> i) & 1) as u32;
                *s += ((sealed >> i) & 1) as u32;
            }
        }
        let fixed = [76, 77, 78, 79, 62, 63];
        for i in 0..128 {
            let share = |c: u32| f64::from(c) / n as f64;
            assert!(
                (0.4..0.6).contains(&share(sealed_ones[i])),
                "sealed bit {i}"
            );
            if !fixed.contains(&i) {
                assert!((0.4..0.6).contains(&share(ones[i])), "channel bit {i}");
            }
        }
    }
}

//! The stored value format: one format-version byte, then bincode with a fixed config.
//!
//! Every value in every tree goes through [`encode`] and [`decode`], so a future format
//! change can read old values by their first byte. Stored types use bincode's own derive
//! (no serde attributes), which keeps them free of `flatten`/`skip`/`tag` pitfalls.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use bincode::{Decode, Encode};

/// The version byte written in front of every value.
pub const FORMAT_V1: u8 = 1;

/// Decoding refuses values claiming to be larger than this (a corrupt length prefix must
/// not allocate gigabytes).
const MAX_VALUE: usize = 64 << 20;

/// The one bincode configuration for stored values. Spelled out so that a bincode default
/// change cannot silently change the format.
pub const BINCODE: Configuration<LittleEndian, Varint, Limit<MAX_VALUE>> =
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<MAX_VALUE>();

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty value")]
    Empty,
    #[error("unknown format version {0}")]
    Version(u8),
    #[error("decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("{0} trailing bytes after value")]
    Trailing(usize),
}

/// `[FORMAT_V1][bincode(value)]`.
pub fn encode<T: Encode>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(256);
    out.push(FORMAT_V1);
    bincode::encode_into_std_write(value, &mut out, BINCODE)?;
    Ok(out)
}

/// The inverse of [`encode`]; rejects unknown versions and trailing garbage.
pub fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_V1 {
        return Err(CodecError::Version(version));
    }
    let (value, used) = bincode::decode_from_slice(body, BINCODE)?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Encode, Decode)]
    struct Sample {
        a: u64,
        b: String,
        c: Option<[u8; 16]>,
    }

    /// A value survives the round trip and carries the version byte first.
    #[test]
    fn round_trip_with_version_byte() {
        let v = Sample {
            a: 7,
            b: "héllo".into(),
            c: Some([9; 16]),
        };
        let bytes = encode(&v).unwrap();
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(decode::<Sample>(&bytes).unwrap(), v);
    }

    /// Unknown versions, empty values, truncation and trailing bytes are errors, not panics.
    #[test]
    fn corrupt_values_are_errors() {
        let bytes = encode(&Sample {
            a: 1,
            b: "x".into(),
            c: None,
        })
        .unwrap();
        assert!(matches!(decode::<Sample>(&[]), Err(CodecError::Empty)));
        let mut wrong = bytes.clone();
        wrong[0] = 99;
        assert!(matches!(
            decode::<Sample>(&wrong),
            Err(CodecError::Version(99))
        ));
        assert!(decode::<Sample>(&bytes[..bytes.len() - 1]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode::<Sample>(&long),
            Err(CodecError::Trailing(1))
        ));
    }

    /// The id newtypes are stored exactly as the bare arrays they replaced: the same
    /// fields encode to the same bytes either way, and each decodes the other's bytes, so
    /// records written before the types existed read back unchanged.
    #[test]
    fn id_newtypes_encode_as_bare_arrays() {
        use crate::job::{ChannelId, ProjectId};

        #[derive(Debug, PartialEq, Encode, Decode)]
        struct Bare {
            request_id: u64,
            channel_id: [u8; 16],
            project_id: [u8; 16],
            previous: Option<[u8; 16]>,
        }
        #[derive(Debug, PartialEq, Encode, Decode)]
        struct Typed {
            request_id: u64,
            channel_id: ChannelId,
            project_id: ProjectId,
            previous: Option<ChannelId>,
        }

        let (channel, project) = ([0xc4; 16], [0x01; 16]);
        let bare = Bare {
            request_id: 300,
            channel_id: channel,
            project_id: project,
            previous: Some(channel),
        };
        let typed = Typed {
            request_id: 300,
            channel_id: ChannelId::from_bytes(channel),
            project_id: ProjectId::from_bytes(project),
            previous: Some(ChannelId::from_bytes(channel)),
        };
        let bytes = encode(&bare).unwrap();
        assert_eq!(encode(&typed).unwrap(), bytes);
        assert_eq!(bytes.len(), 1 + 3 + 16 + 16 + 1 + 16, "no length prefixes");
        assert_eq!(decode::<Typed>(&bytes).unwrap(), typed);
        assert_eq!(decode::<Bare>(&encode(&typed).unwrap()).unwrap(), bare);
    }
}

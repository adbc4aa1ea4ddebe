//! The two public 16-byte ids: a project's and a request's channel.
//!
//! Both are UUIDs, and both were bare `[u8; 16]` once, so `request_of(project, channel)`
//! took them swapped without a word. Each is now its own type. On disk a newtype encodes
//! exactly as the array inside it (bincode writes a struct as its fields, an array as its
//! bytes), so records stored before the types existed read back unchanged; keys are built
//! by hand from [`ProjectId::as_bytes`] as before. On the wire each is the lowercase
//! hyphenated UUID of [`std::fmt::Display`].

use std::fmt;
use std::str::FromStr;

use bincode::{Decode, Encode};

/// Text that is not a UUID. Callers turn it into their own answer (a 404 for a channel
/// in a URL, a malformed token, a refused join).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a UUID")]
pub struct InvalidId;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
        pub struct $name([u8; 16]);

        impl $name {
            pub const fn from_bytes(bytes: [u8; 16]) -> $name {
                $name(bytes)
            }

            /// The 16 bytes, big-endian as the UUID reads, for building store keys.
            pub const fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            /// A new random (version 4) id.
            pub fn random() -> $name {
                $name(*uuid::Uuid::new_v4().as_bytes())
            }
        }

        /// The lowercase hyphenated UUID.
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                uuid::Uuid::from_bytes(self.0).hyphenated().fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        /// Any spelling of a UUID that the `uuid` crate parses (hyphenated, simple,
        /// braced, URN, either case).
        impl FromStr for $name {
            type Err = InvalidId;

            fn from_str(text: &str) -> Result<$name, InvalidId> {
                uuid::Uuid::try_parse(text)
                    .map(|u| $name(*u.as_bytes()))
                    .map_err(|_| InvalidId)
            }
        }
    };
}

uuid_id! {
    /// A project (tenant): every catalog entry, request and dead letter belongs to one.
    ProjectId
}

uuid_id! {
    /// A request's public id: its `channel_id` in URLs, payloads and socket topics.
    ChannelId
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text form is the lowercase hyphenated UUID and parses back; other spellings
    /// of the same UUID parse to the same id; anything else is refused.
    #[test]
    fn ids_print_and_parse_as_uuids() {
        let bytes = *uuid::Uuid::parse_str("0f8fad5b-d9cb-469f-a165-70867728950e")
            .unwrap()
            .as_bytes();
        let channel = ChannelId::from_bytes(bytes);
        let text = channel.to_string();
        assert_eq!(text, "0f8fad5b-d9cb-469f-a165-70867728950e");
        assert_eq!(ProjectId::from_bytes(bytes).to_string(), text);
        assert_eq!(text.parse::<ChannelId>(), Ok(channel));
        assert_eq!(
            "0F8FAD5BD9CB469FA16570867728950E".parse::<ChannelId>(),
            Ok(channel)
        );
        assert_eq!(format!("{channel:?}"), format!("ChannelId({text})"));
        for bad in ["", "request", "0f8fad5b-d9cb-469f-a165-70867728950", "😀"] {
            assert_eq!(bad.parse::<ProjectId>(), Err(InvalidId), "{bad}");
        }
    }
}

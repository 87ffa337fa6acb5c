//! The one codec of the crate: serde values to bytes and back, with postcard.
//!
//! postcard is the encoding ipc-channel 0.23 itself uses. (bincode is not an
//! option: RUSTSEC-2025-0141 marks every release unmaintained.) Decoding
//! checks that the whole payload was consumed, so a value of another type that
//! happens to decode from a prefix is still refused.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

/// Encodes `value`; `what` names it for the error message.
pub(crate) fn encode<T: Serialize>(
    value: &T,
    what: impl FnOnce() -> String,
) -> Result<Vec<u8>, Error> {
    postcard::to_allocvec(value).map_err(|e| Error::Encode {
        what: what(),
        detail: e.to_string(),
    })
}

/// Decodes a whole `T` from `bytes`; `what` names it for the error message.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, Error> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(Error::Decode {
            what: what(),
            detail: format!(
                "{} bytes were left over after a {}: the bytes hold a value of another type",
                rest.len(),
                std::any::type_name::<T>()
            ),
        }),
        Err(e) => Err(Error::Decode {
            what: what(),
            detail: format!("not a valid {}: {e}", std::any::type_name::<T>()),
        }),
    }
}

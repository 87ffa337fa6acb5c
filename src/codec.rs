//! The one codec of the crate: serde values to bytes and back, with postcard.
//!
//! postcard is the encoding ipc-channel 0.23 itself uses. (bincode is not an
//! option: RUSTSEC-2025-0141 marks every release unmaintained.) Decoding
//! checks that the whole payload was consumed, so a value of another type that
//! happens to decode from a prefix is still refused.
//!
//! `Vec<u8>` and `String` skip serde: their bytes are the payload, copied
//! once instead of encoded byte by byte. Both sides know the type (the
//! handshake checks the type names), so they agree on the format.

use std::any::{Any, TypeId};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

/// Encodes `value`; `what` names it for the error message.
pub(crate) fn encode<T: Serialize + 'static>(
    value: &T,
    what: impl FnOnce() -> String,
) -> Result<Vec<u8>, Error> {
    if let Some(bytes) = raw_bytes(value) {
        return Ok(copy_bytes(bytes));
    }
    postcard::to_allocvec(value).map_err(|e| Error::Encode {
        what: what(),
        detail: e.to_string(),
    })
}

/// Encodes `value` (not a `Vec<u8>` or `String`) into `buf` if it fits: its
/// length, or `None` when it does not fit (or cannot be encoded: the
/// caller's [`encode`] then says why).
pub(crate) fn encode_into<T: Serialize>(value: &T, buf: &mut [u8]) -> Option<usize> {
    postcard::to_slice(value, buf).ok().map(|used| used.len())
}

/// The bytes of a `Vec<u8>` or `String`, which are their own encoding,
/// taken without a copy; any other value back.
pub(crate) fn into_raw_bytes<T: 'static>(value: T) -> Result<Vec<u8>, T> {
    let mut slot = Some(value);
    let any = &mut slot as &mut dyn Any;
    if let Some(bytes) = any.downcast_mut::<Option<Vec<u8>>>().and_then(Option::take) {
        return Ok(bytes);
    }
    if let Some(text) = any.downcast_mut::<Option<String>>().and_then(Option::take) {
        return Ok(text.into_bytes());
    }
    match slot {
        Some(value) => Err(value),
        // Not reached: the slot is emptied only on the paths that return.
        None => Ok(Vec::new()),
    }
}

/// The bytes of a `Vec<u8>` or `String`, which are their own encoding.
pub(crate) fn raw_bytes<T: 'static>(value: &T) -> Option<&[u8]> {
    let any = value as &dyn Any;
    if let Some(bytes) = any.downcast_ref::<Vec<u8>>() {
        return Some(bytes);
    }
    any.downcast_ref::<String>().map(String::as_bytes)
}

/// Copies of this many bytes or more ask for huge pages (see [`copy_bytes`]).
const HUGE_FROM: usize = 4 << 20;

/// The size of a transparent huge page.
const HUGE_PAGE: usize = 2 << 20;

/// A copy of `bytes` in a new `Vec`.
///
/// A big one asks the kernel for transparent huge pages before it is
/// written: glibc maps a big allocation afresh, and filling fresh memory
/// 4 KiB at a time costs a page fault per page (64 MiB: 16k faults; with
/// huge pages, 32). Where huge pages are off, the advice does nothing.
/// From [`PARALLEL_FROM`] the copy is shared among threads (see
/// [`in_parallel`]).
pub(crate) fn copy_bytes(bytes: &[u8]) -> Vec<u8> {
    if bytes.len() < HUGE_FROM {
        return bytes.to_vec();
    }
    let mut v = Vec::with_capacity(bytes.len());
    advise_huge_pages(&mut v);
    let spare = &mut v.spare_capacity_mut()[..bytes.len()];
    in_parallel(spare, bytes, |dst, src| {
        for (d, s) in dst.iter_mut().zip(src) {
            d.write(*s);
        }
    });
    // SAFETY: `in_parallel` wrote every one of the first `bytes.len()`
    // bytes of the capacity (it hands out every piece, and returns only
    // once each was written), and the capacity holds that many.
    unsafe { v.set_len(bytes.len()) };
    v
}

/// Copies `src` into `dst` (of the same length), with several threads
/// from [`PARALLEL_FROM`] bytes.
pub(crate) fn copy_into(dst: &mut [u8], src: &[u8]) {
    in_parallel(dst, src, <[u8]>::copy_from_slice);
}

/// From this many bytes a copy is shared among threads.
///
/// A big payload is copied twice on its way, once into a shared-memory
/// segment by the sender and once out of it into the receiver's own
/// `Vec`, and one after the other: while one process copies, the other
/// waits, and a CPU sits idle. Most of the time of a copy into fresh
/// memory is the kernel giving and zeroing its pages, which threads of one
/// process can do side by side. (A `Vec<u8>` to a worker on 2 CPUs, one
/// at a time, medians of 6, two interleaved runs of a probe: 1 GiB went
/// from 687-729 to 1,313-1,771 MiB/s, 256 MiB from 1,510-1,517 to
/// 2,818-3,127 MiB/s; 64 MiB stayed at about 2,500.)
const PARALLEL_FROM: usize = 32 << 20;

/// Pieces a parallel copy is cut into: several per thread, so that a
/// thread slowed by others finishes less.
const PIECE: usize = 8 << 20;

/// Calls `copy(dst_piece, src_piece)` on pieces of `dst` and `src` (of the
/// same length), on this thread and, from [`PARALLEL_FROM`] bytes, on up to
/// as many helper threads as there are CPUs, minus one. A helper that the
/// system will not start costs nothing but speed: this thread then copies
/// more pieces.
fn in_parallel<D: Send>(dst: &mut [D], src: &[u8], copy: impl Fn(&mut [D], &[u8]) + Sync) {
    let len = src.len().min(dst.len());
    let cpus = if len < PARALLEL_FROM {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    if cpus < 2 {
        copy(&mut dst[..len], &src[..len]);
        return;
    }
    let pieces: std::sync::Mutex<Vec<(&mut [D], &[u8])>> = std::sync::Mutex::new(
        dst[..len]
            .chunks_mut(PIECE)
            .zip(src[..len].chunks(PIECE))
            .rev()
            .collect(),
    );
    let work = || loop {
        let piece = pieces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        match piece {
            Some((d, s)) => copy(d, s),
            None => return,
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..cpus.min(4) {
            let _ = std::thread::Builder::new()
                .name("twinpool-copy".into())
                .spawn_scoped(scope, work);
        }
        work();
    });
}

/// Asks for huge pages in the whole huge pages inside `v`'s capacity.
#[cfg(target_os = "linux")]
fn advise_huge_pages(v: &mut Vec<u8>) {
    let start = v.as_mut_ptr();
    let skip = start.align_offset(HUGE_PAGE);
    let Some(len) = v.capacity().checked_sub(skip) else {
        return;
    };
    let len = len / HUGE_PAGE * HUGE_PAGE;
    if len > 0 {
        // SAFETY: the range lies inside `v`'s allocation, and the advice
        // changes no byte of it (it fails harmlessly where unsupported).
        unsafe {
            libc::madvise(start.wrapping_add(skip).cast(), len, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_: &mut Vec<u8>) {}

/// Decodes a whole `T` from `bytes`; `what` names it for the error message.
pub(crate) fn decode<T: DeserializeOwned + 'static>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, Error> {
    let raw: Option<Box<dyn Any>> = if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
        Some(Box::new(copy_bytes(bytes)))
    } else if TypeId::of::<T>() == TypeId::of::<String>() {
        match String::from_utf8(copy_bytes(bytes)) {
            Ok(s) => Some(Box::new(s)),
            Err(e) => {
                return Err(Error::Decode {
                    what: what(),
                    detail: format!("the bytes are not a UTF-8 String: {e}"),
                })
            }
        }
    } else {
        None
    };
    if let Some(raw) = raw {
        if let Ok(value) = raw.downcast::<T>() {
            return Ok(*value);
        }
    }
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
            detail: format!("not a valid {}: {}", std::any::type_name::<T>(), why(e)),
        }),
    }
}

/// Whether `T` is a `Vec<u8>` or a `String`, whose bytes are its encoding.
fn is_raw<T: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<Vec<u8>>() || TypeId::of::<T>() == TypeId::of::<String>()
}

/// Appends `v` as postcard's varint (LEB128: seven bits a byte, low first).
fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The next item of a sequence of `Vec<u8>` or `String` (see
/// [`encode_seq`]) and the bytes after it; `None` for another `T`.
fn take_raw_item<T: 'static>(bytes: &[u8]) -> Option<Result<(T, &[u8]), String>> {
    if !is_raw::<T>() {
        return None;
    }
    let (len, rest) = match postcard::take_from_bytes::<u64>(bytes) {
        Ok(found) => found,
        Err(e) => return Some(Err(format!("no item length: {e}"))),
    };
    let Some(len) = usize::try_from(len).ok().filter(|&n| n <= rest.len()) else {
        return Some(Err(format!(
            "an item of {len} bytes, but only {} are left",
            rest.len()
        )));
    };
    let (item, rest) = rest.split_at(len);
    let value: Box<dyn Any> = if TypeId::of::<T>() == TypeId::of::<String>() {
        match String::from_utf8(copy_bytes(item)) {
            Ok(s) => Box::new(s),
            Err(e) => return Some(Err(format!("the bytes are not a UTF-8 String: {e}"))),
        }
    } else {
        Box::new(copy_bytes(item))
    };
    Some(match value.downcast::<T>() {
        Ok(value) => Ok((*value, rest)),
        Err(_) => Err("not a sequence of raw bytes".into()),
    })
}

/// What a decoding error says: postcard keeps no message of a custom error,
/// so a refused [`Shared`](crate::Shared) handle's reason is taken from
/// where it left it.
fn why(e: postcard::Error) -> String {
    match (&e, crate::shared::take_refusal()) {
        (postcard::Error::SerdeDeCustom, Some(reason)) => reason,
        _ => e.to_string(),
    }
}

/// Encodes a chunk of values as one sequence, exactly as postcard encodes a
/// `Vec<T>` (a varint count, then each item). A sequence of `Vec<u8>` or
/// `String` is written here with the same bytes postcard would write, but a
/// length and a copy per item instead of a serde call per byte (which runs
/// at a tenth of the speed).
pub(crate) fn encode_seq<T: Serialize + 'static>(
    items: &[T],
    what: impl FnOnce() -> String,
) -> Result<Vec<u8>, Error> {
    if is_raw::<T>() {
        let total: usize = (items.iter())
            .map(|x| raw_bytes(x).map_or(0, <[u8]>::len) + 10)
            .sum();
        let mut out = Vec::with_capacity(total + 10);
        push_varint(&mut out, items.len() as u64);
        for item in items {
            let bytes = raw_bytes(item).unwrap_or_default();
            push_varint(&mut out, bytes.len() as u64);
            out.extend_from_slice(bytes);
        }
        return Ok(out);
    }
    postcard::to_allocvec(items).map_err(|e| Error::Encode {
        what: what(),
        detail: e.to_string(),
    })
}

/// Decodes a sequence written by [`encode_seq`] item by item: the items
/// before the first that fails to decode (or whose `Deserialize` panics),
/// and that failure.
pub(crate) fn decode_seq_items<T: DeserializeOwned + 'static>(
    bytes: &[u8],
    what: impl Fn() -> String,
) -> (Vec<T>, Option<Error>) {
    let failed = |detail: String| Error::Decode {
        what: what(),
        detail,
    };
    let (n, mut rest) = match postcard::take_from_bytes::<u64>(bytes) {
        Ok(found) => found,
        Err(e) => return (Vec::new(), Some(failed(format!("no item count: {e}")))),
    };
    // The count is the sender's word: never reserve more than the bytes
    // could hold.
    let mut items = Vec::with_capacity(usize::try_from(n).unwrap_or(0).min(rest.len()));
    for _ in 0..n {
        if let Some(taken) = take_raw_item::<T>(rest) {
            match taken {
                Ok((item, left)) => {
                    items.push(item);
                    rest = left;
                    continue;
                }
                Err(detail) => return (items, Some(failed(detail))),
            }
        }
        let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            postcard::take_from_bytes::<T>(rest)
        }));
        match taken {
            Ok(Ok((item, left))) => {
                items.push(item);
                rest = left;
            }
            Ok(Err(e)) => {
                let detail = format!("not a {}: {}", std::any::type_name::<T>(), why(e));
                return (items, Some(failed(detail)));
            }
            Err(p) => {
                let detail = format!(
                    "its Deserialize panicked: {}",
                    crate::error::panic_message(&*p)
                );
                crate::error::drop_panic_payload(p);
                return (items, Some(failed(detail)));
            }
        }
    }
    if !rest.is_empty() {
        let detail = format!("{} bytes were left over after the items", rest.len());
        return (items, Some(failed(detail)));
    }
    (items, None)
}

/// Decodes a whole sequence written by [`encode_seq`].
pub(crate) fn decode_seq<T: DeserializeOwned + 'static>(
    bytes: &[u8],
    what: impl Fn() -> String,
) -> Result<Vec<T>, Error> {
    if is_raw::<T>() {
        return match decode_seq_items::<T>(bytes, &what) {
            (items, None) => Ok(items),
            (_, Some(e)) => Err(e),
        };
    }
    match postcard::take_from_bytes::<Vec<T>>(bytes) {
        Ok((items, [])) => Ok(items),
        Ok((_, rest)) => Err(Error::Decode {
            what: what(),
            detail: format!("{} bytes were left over after the items", rest.len()),
        }),
        Err(e) => Err(Error::Decode {
            what: what(),
            detail: format!(
                "not a sequence of {}: {}",
                std::any::type_name::<T>(),
                why(e)
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let what = || "x".to_string();
        let v = (3u64, "a".to_string(), vec![1i32, -2]);
        assert_eq!(
            decode::<(u64, String, Vec<i32>)>(&encode(&v, what).unwrap(), what).unwrap(),
            v
        );
        let bytes = vec![0u8, 255, 7];
        assert_eq!(encode(&bytes, what).unwrap(), bytes);
        assert_eq!(decode::<Vec<u8>>(&bytes, what).unwrap(), bytes);
        assert_eq!(decode::<String>(b"hi", what).unwrap(), "hi");
    }

    #[test]
    fn big_bytes_round_trip() {
        let what = || "x".to_string();
        let bytes: Vec<u8> = (0..HUGE_FROM + HUGE_PAGE + 3).map(|i| i as u8).collect();
        assert_eq!(encode(&bytes, what).unwrap(), bytes);
        assert_eq!(decode::<Vec<u8>>(&bytes, what).unwrap(), bytes);
        let s = "é".repeat(HUGE_FROM);
        assert_eq!(decode::<String>(s.as_bytes(), what).unwrap(), s);
    }

    /// Copies big enough to be shared among threads come out exact, with a
    /// last piece shorter than the others.
    #[test]
    fn parallel_copies_are_exact() {
        let len = PARALLEL_FROM + 2 * PIECE + 12_345;
        let src: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        assert_eq!(copy_bytes(&src), src);
        let mut dst = vec![0u8; len];
        copy_into(&mut dst, &src);
        assert_eq!(dst, src);
    }

    /// Sequences of bytes and strings are written by hand, byte for byte
    /// as postcard writes them, and read back either way.
    #[test]
    fn raw_sequences_are_postcard_sequences() {
        let what = || "x".to_string();
        let long = vec![7u8; 300];
        let bytes: Vec<Vec<u8>> = vec![vec![], vec![1, 2, 3], long];
        let ours = encode_seq(&bytes, what).unwrap();
        assert_eq!(ours, postcard::to_allocvec(&bytes).unwrap());
        assert_eq!(decode_seq::<Vec<u8>>(&ours, what).unwrap(), bytes);
        assert_eq!(decode_seq_items::<Vec<u8>>(&ours, what), (bytes, None));
        let text = vec!["".to_string(), "é".repeat(100)];
        let ours = encode_seq(&text, what).unwrap();
        assert_eq!(ours, postcard::to_allocvec(&text).unwrap());
        assert_eq!(decode_seq::<String>(&ours, what).unwrap(), text);
        // Cut short, or not UTF-8: the items before, then the error.
        let (items, err) = decode_seq_items::<String>(&ours[..ours.len() - 1], what);
        assert_eq!(items, vec![String::new()]);
        assert!(matches!(err, Some(Error::Decode { .. })));
        let bad = postcard::to_allocvec(&vec![vec![0xffu8]]).unwrap();
        assert!(decode_seq::<String>(&bad, what).is_err());
    }

    #[test]
    fn leftover_bytes_are_a_decode_error() {
        let what = || "x".to_string();
        let two = encode(&(1u8, 2u8), what).unwrap();
        assert!(matches!(
            decode::<u8>(&two, what),
            Err(Error::Decode { .. })
        ));
        assert!(matches!(
            decode::<String>(&[0xff], what),
            Err(Error::Decode { .. })
        ));
    }
}

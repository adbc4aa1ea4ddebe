//! Stored values: [`eddy::store::decode_request`] on arbitrary bytes, and the same codec
//! for timeline entries (`(at_ms, Step)`) and dead letters.
//!
//! Checks that a corrupt value is an error, never a panic, and never makes the decoder hold
//! more memory than the codec's 64 MiB limit; that a value that decodes re-encodes to bytes
//! that decode to an equal value (and re-encode to the same bytes).

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use bincode::{Decode, Encode};
use eddy::job::{DeadLetter, Request, Step};
use eddy::store::{FORMAT_V1, decode_request, encode_request};
use libfuzzer_sys::fuzz_target;

/// The store's private codec (`store/codec.rs`), restated for the types that have no
/// public decoder; every input checks that it agrees with `decode_request`.
const MAX_VALUE: usize = 64 << 20;
const BINCODE: Configuration<LittleEndian, Varint, Limit<MAX_VALUE>> = bincode::config::standard()
    .with_little_endian()
    .with_variable_int_encoding()
    .with_limit::<MAX_VALUE>();

/// What one decode may hold beyond the codec's limit: the error value and allocator slack.
const SLACK: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let request = measured(|| decode_request(data));
    let restated = measured(|| decode::<Request>(data));
    assert_eq!(
        request.as_ref().ok(),
        restated.as_ref(),
        "the restated codec disagrees with the store's"
    );
    if let Ok(record) = request {
        let bytes = encode_request(&record).expect("a decoded record encodes");
        let again = decode_request(&bytes).expect("a re-encoded record decodes");
        assert_eq!(again, record);
        assert_eq!(encode_request(&again).unwrap(), bytes);
    }
    if let Some(step) = measured(|| decode::<(u64, Step)>(data)) {
        round_trip(&step);
    }
    if let Some(entry) = measured(|| decode::<DeadLetter>(data)) {
        round_trip(&entry);
    }
});

fn decode<T: Decode<()>>(bytes: &[u8]) -> Option<T> {
    let (&version, body) = bytes.split_first()?;
    if version != FORMAT_V1 {
        return None;
    }
    let (value, used) = bincode::decode_from_slice(body, BINCODE).ok()?;
    (used == body.len()).then_some(value)
}

fn encode<T: Encode>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    bincode::encode_into_std_write(value, &mut out, BINCODE).expect("a decoded value encodes");
    out
}

fn round_trip<T: Encode + Decode<()> + PartialEq + std::fmt::Debug>(value: &T) {
    let bytes = encode(value);
    let again: T = decode(&bytes).expect("a re-encoded value decodes");
    assert_eq!(&again, value);
    assert_eq!(encode(&again), bytes);
}

/// Runs `f` and fails if the memory it held at its peak passed the codec's limit.
fn measured<T>(f: impl FnOnce() -> T) -> T {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    let held = PEAK.load(Ordering::Relaxed) - base;
    assert!(held <= MAX_VALUE + SLACK, "decoding held {held} bytes");
    out
}

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// Counts live heap bytes and their peak (libFuzzer's own malloc limit needs a sanitizer;
/// this works with `--sanitizer none` too).
struct Counting;

impl Counting {
    fn grew(by: usize) {
        let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
        PEAK.fetch_max(live, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            if new_size >= layout.size() {
                Self::grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

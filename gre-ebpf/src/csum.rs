//! Internet checksums (RFC 1071): of headers built on the stack, and of packet ranges.

use core::{ffi::c_void, ptr::null_mut};

use aya_ebpf::helpers::{bpf_csum_diff, bpf_loop};

use crate::packet::Packet;

/// Folds a 32-bit one's-complement sum to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
    let folded = sum as u16;
    folded
}

/// One's-complement sum of big-endian 16-bit words of a stack buffer of even length.
#[inline(always)]
pub fn sum_words<const N: usize>(b: &[u8; N]) -> u64 {
    let mut sum = 0u64;
    let mut i = 0;
    while i + 1 < N {
        sum += u64::from(u16::from_be_bytes([b[i], b[i + 1]]));
        i += 2;
    }
    sum
}

/// The IPv4 header checksum of a header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header(h: &[u8; 20]) -> u16 {
    !fold(sum_words(h))
}

/// Bytes summed per `bpf_loop` round; the callback's buffer lives on the BPF stack (512 bytes
/// for the whole call chain), so it stays small.
const CHUNK: u32 = 32;
const MAX_ROUNDS: u32 = (crate::packet::MAX_OFFSET as u32) / CHUNK + 1;

/// State shared with the `bpf_loop` callback.
#[repr(C)]
struct SumState {
    raw: *mut c_void,
    off: u32,
    end: u32,
    failed: u32,
    sum: u64,
}

/// One's-complement sum of the packet bytes in `[start, end)` as big-endian words (an odd last
/// byte padded with zero), or `None` if the range is not inside the packet.
///
/// The loop runs in `bpf_loop`, so the verifier checks its body once rather than once per
/// round and per path that leads here.
#[inline(always)]
pub fn sum_range<P: Packet>(p: &P, start: usize, end: usize) -> Option<u64> {
    if start > end || end > crate::packet::MAX_OFFSET {
        return None;
    }
    #[expect(clippy::cast_possible_truncation, reason = "bounded by MAX_OFFSET above")]
    let mut state = SumState { raw: p.raw(), off: start as u32, end: end as u32, failed: 0, sum: 0 };
    // SAFETY: the callback only touches `state` and the packet through the load helper.
    let rounds = unsafe { bpf_loop(MAX_ROUNDS, sum_chunk::<P> as *mut c_void, (&raw mut state).cast(), 0) };
    (rounds >= 0 && state.failed == 0 && state.off == state.end).then_some(state.sum)
}

/// One round: up to CHUNK bytes through the load helper, summed by `bpf_csum_diff`.
extern "C" fn sum_chunk<P: Packet>(_round: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the SumState that sum_range passed.
    let s = unsafe { &mut *ctx.cast::<SumState>() };
    if s.off >= s.end {
        return 1;
    }
    let left = s.end - s.off;
    // In 1..=CHUNK, in a form the verifier can bound (it needs a non-zero size for the helper).
    let n = (left.min(CHUNK).wrapping_sub(1) & (CHUNK - 1)) + 1;
    // Zeroed, so a length that is not a multiple of 4 is padded with zeros, as RFC 1071 pads;
    // 4 spare bytes because the verifier sees the rounded-up length as up to CHUNK + 3.
    let mut buf = [0u8; CHUNK as usize + 4];
    // SAFETY: `buf` has room for n <= CHUNK bytes.
    if unsafe { P::load_raw(s.raw, s.off, buf.as_mut_ptr(), n) } != 0 {
        s.failed = 1;
        return 1;
    }
    // SAFETY: the helper reads (n rounded up to 4) <= CHUNK bytes of `buf`.
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a 32-bit partial sum")]
    let partial = unsafe { bpf_csum_diff(null_mut(), 0, buf.as_mut_ptr().cast(), (n + 3) & !3, 0) } as u32;
    // The helper sums native-endian (little-endian) words; swapping the folded result gives the
    // big-endian sum. Every round but the last is a multiple of 4 bytes long, so words line up.
    s.sum += u64::from(fold(u64::from(partial)).swap_bytes());
    s.off += n;
    0
}

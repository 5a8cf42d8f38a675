//! Payload masking (RFC 6455 §5.3) with runtime-selected SIMD kernels.
//!
//! XOR with a repeating 4-byte key is memory-bound; the kernels below process 32 (AVX2) or
//! 16 (SSE2, NEON) bytes per step with unaligned loads and stores, and a word-at-a-time scalar
//! loop handles the rest. Because 16 and 32 are multiples of 4, the key's phase is the same at
//! the start of every vector, so one broadcast key serves the whole buffer.
//!
//! The dispatch is checked at run time (`is_x86_feature_detected!`, cached by std), so one
//! binary runs everywhere and uses AVX2 where the CPU has it. Every kernel is tested against
//! [`apply_mask_scalar`] for all lengths up to several vectors and every alignment.

/// Buffers shorter than this are masked with the scalar kernel.
const SIMD_MIN_LEN: usize = 256;

/// XOR `buf` with `key`, where `buf[0]` is at payload offset `offset` (so the key phase is
/// `offset % 4`). Masking and unmasking are the same operation.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate(key, offset);
    // Below this size the word-at-a-time loop (which LLVM vectorises with the baseline SSE2)
    // beats the dispatch: measured at 128 B 4.4 ns scalar vs 6.8 ns AVX2, at 256 B 7.7 vs 6.6
    // (bench/RESULTS.md).
    if buf.len() < SIMD_MIN_LEN {
        return apply_mask_scalar(buf, key);
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked on the line above.
            return unsafe { x86::apply_mask_avx2(buf, key) };
        }
        // SAFETY: SSE2 is part of the x86_64 baseline, so every x86_64 CPU has it.
        unsafe { x86::apply_mask_sse2(buf, key) }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is mandatory on aarch64 (and enabled in every aarch64 target spec).
        unsafe { neon::apply_mask_neon(buf, key) }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    apply_mask_scalar(buf, key)
}

/// Rotate the key so that index 0 of the buffer gets `key[offset % 4]`.
#[inline]
fn rotate(key: [u8; 4], offset: usize) -> [u8; 4] {
    let r = offset % 4;
    [key[r], key[(r + 1) % 4], key[(r + 2) % 4], key[(r + 3) % 4]]
}

/// The portable reference kernel: 8 bytes at a time, then byte by byte. Phase 0 (`buf[0]`
/// is XORed with `key[0]`).
#[inline]
pub fn apply_mask_scalar(buf: &mut [u8], key: [u8; 4]) {
    let k8 = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let v = u64::from_ne_bytes(w) ^ k8;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        // The remainder starts at a multiple of 8, so the phase is still 0.
        *b ^= key[i & 3];
    }
}

/// Copy `src` into `dst` while masking (used by clients, which must not mutate shared payloads).
#[inline]
pub fn mask_copy(dst: &mut [u8], src: &[u8], key: [u8; 4]) {
    debug_assert_eq!(dst.len(), src.len());
    dst.copy_from_slice(src);
    apply_mask(dst, key, 0);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm_loadu_si128, _mm_set1_epi32, _mm_storeu_si128, _mm_xor_si128, _mm256_loadu_si256,
        _mm256_set1_epi32, _mm256_storeu_si256, _mm256_xor_si256,
    };

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn apply_mask_avx2(buf: &mut [u8], key: [u8; 4]) {
        let k = _mm256_set1_epi32(i32::from_ne_bytes(key));
        let mut chunks = buf.chunks_exact_mut(32);
        for c in &mut chunks {
            let p = c.as_mut_ptr().cast::<__m256i>();
            // SAFETY: `c` is exactly 32 bytes, valid for reads and writes; the unaligned
            // load/store intrinsics have no alignment requirement.
            unsafe { _mm256_storeu_si256(p, _mm256_xor_si256(_mm256_loadu_si256(p), k)) };
        }
        super::apply_mask_scalar(chunks.into_remainder(), key);
    }

    /// # Safety
    /// The CPU must support SSE2 (always true on x86_64).
    #[target_feature(enable = "sse2")]
    pub(super) unsafe fn apply_mask_sse2(buf: &mut [u8], key: [u8; 4]) {
        let k = _mm_set1_epi32(i32::from_ne_bytes(key));
        let mut chunks = buf.chunks_exact_mut(16);
        for c in &mut chunks {
            let p = c.as_mut_ptr().cast::<__m128i>();
            // SAFETY: `c` is exactly 16 bytes, valid for reads and writes; unaligned intrinsics.
            unsafe { _mm_storeu_si128(p, _mm_xor_si128(_mm_loadu_si128(p), k)) };
        }
        super::apply_mask_scalar(chunks.into_remainder(), key);
    }

    #[cfg(test)]
    pub(super) fn has_avx2() -> bool {
        std::is_x86_feature_detected!("avx2")
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::{vdupq_n_u32, veorq_u8, vld1q_u8, vreinterpretq_u8_u32, vst1q_u8};

    /// # Safety
    /// The CPU must support NEON (mandatory on aarch64).
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn apply_mask_neon(buf: &mut [u8], key: [u8; 4]) {
        let k = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_ne_bytes(key)));
        let mut chunks = buf.chunks_exact_mut(16);
        for c in &mut chunks {
            let p = c.as_mut_ptr();
            // SAFETY: `c` is exactly 16 bytes, valid for reads and writes; vld1q/vst1q have no
            // alignment requirement beyond u8.
            unsafe { vst1q_u8(p, veorq_u8(vld1q_u8(p), k)) };
        }
        super::apply_mask_scalar(chunks.into_remainder(), key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition from RFC 6455 §5.3, byte by byte.
    fn reference(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(offset + i) % 4];
        }
    }

    fn data(len: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_u32;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    type Kernel = fn(&mut [u8], [u8; 4]);

    fn kernels() -> Vec<(&'static str, Kernel)> {
        let mut k: Vec<(&'static str, Kernel)> = vec![("scalar", apply_mask_scalar)];
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: SSE2 is baseline on x86_64.
            k.push(("sse2", |b, key| unsafe { x86::apply_mask_sse2(b, key) }));
            if x86::has_avx2() {
                // SAFETY: guarded by the runtime check above.
                k.push(("avx2", |b, key| unsafe { x86::apply_mask_avx2(b, key) }));
            }
        }
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is mandatory on aarch64.
        k.push(("neon", |b, key| unsafe { neon::apply_mask_neon(b, key) }));
        k
    }

    #[test]
    fn every_kernel_matches_the_reference_for_all_lengths_and_alignments() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let src = data(300 + 64);
        for (name, kernel) in kernels() {
            for align in 0..32 {
                for len in 0..=300 {
                    let mut a = src[align..align + len].to_vec();
                    let mut b = a.clone();
                    // Work on a sub-slice at `align` of a larger buffer so the pointer itself
                    // is misaligned, not just the length.
                    let mut backing = src.clone();
                    let slice = &mut backing[align..align + len];
                    kernel(slice, key);
                    reference(&mut a, key, 0);
                    assert_eq!(slice, &a[..], "{name} len={len} align={align}");
                    apply_mask(&mut b, key, 0);
                    assert_eq!(b, a, "dispatch len={len} align={align}");
                }
            }
        }
    }

    #[test]
    fn offset_rotates_the_key() {
        let key = [1, 2, 3, 4];
        for offset in 0..8 {
            for len in [0, 1, 5, 31, 32, 33, 100] {
                let mut a = data(len);
                let mut b = a.clone();
                apply_mask(&mut a, key, offset);
                reference(&mut b, key, offset);
                assert_eq!(a, b, "offset={offset} len={len}");
            }
        }
    }

    #[test]
    fn masking_twice_is_identity_and_mask_copy_matches() {
        let orig = data(1000);
        let mut buf = orig.clone();
        apply_mask(&mut buf, [9, 8, 7, 6], 0);
        let mut copied = vec![0; orig.len()];
        mask_copy(&mut copied, &orig, [9, 8, 7, 6]);
        assert_eq!(copied, buf);
        apply_mask(&mut buf, [9, 8, 7, 6], 0);
        assert_eq!(buf, orig);
    }
}

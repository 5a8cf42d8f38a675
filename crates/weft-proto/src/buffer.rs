//! A small per-thread pool of I/O buffers.
//!
//! Idle connections should hold no read or write buffer at all (memory per idle connection is a
//! headline number), yet a busy connection must not pay an allocation per message. Connections
//! therefore give their empty buffers back here when they go idle and take one again when bytes
//! arrive: a push and a pop on a thread-local `Vec` instead of `malloc`/`free`. Only buffers
//! that nothing else references (no outstanding zero-copy [`Bytes`](bytes::Bytes)) and that are
//! not oversized are pooled; the pool itself is bounded.

use std::cell::RefCell;

use bytes::BytesMut;

/// Capacity of a fresh buffer.
pub const INITIAL_CAPACITY: usize = 32 * 1024;
/// Buffers larger than this are freed rather than pooled.
const MAX_POOLED_CAPACITY: usize = 64 * 1024;
/// Most buffers kept per thread.
const MAX_POOLED: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A buffer with at least [`INITIAL_CAPACITY`] bytes of room.
pub fn take() -> BytesMut {
    POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| BytesMut::with_capacity(INITIAL_CAPACITY))
}

/// Return a buffer. Its contents are discarded.
pub fn give(mut buf: BytesMut) {
    buf.clear();
    // `try_reclaim` succeeds only if no `Bytes` still points into the allocation, so a pooled
    // buffer never aliases memory the application holds.
    if buf.capacity() > MAX_POOLED_CAPACITY || !buf.try_reclaim(INITIAL_CAPACITY) {
        return;
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < MAX_POOLED {
            p.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_buffers_are_reused_and_shared_ones_are_not() {
        let mut b = take();
        b.extend_from_slice(b"hello");
        let ptr = b.as_ptr();
        give(b);
        let b2 = take();
        assert_eq!(b2.as_ptr(), ptr);
        assert!(b2.is_empty() && b2.capacity() >= INITIAL_CAPACITY);

        let mut b3 = b2;
        b3.extend_from_slice(b"shared");
        let frozen = b3.split().freeze();
        let ptr3 = frozen.as_ptr();
        give(b3);
        let b4 = take();
        assert_ne!(b4.as_ptr(), ptr3, "a buffer aliasing live Bytes must not be pooled");
        drop(frozen);
    }
}

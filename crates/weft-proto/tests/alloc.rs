//! Hot paths allocate nothing per message in steady state: a counting global allocator around
//! a server that receives and echoes messages through the sans-IO core.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use weft_proto::{Config, Connection, Event, Message, Role};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Client frames for `n` messages of `size` bytes (text if `text`).
fn wire(n: usize, size: usize, text: bool) -> Vec<u8> {
    let now = Instant::now();
    let mut c = Connection::new(Role::Client, Config::default(), now);
    let mut out = Vec::new();
    for _ in 0..n {
        let m = if text { Message::text("a".repeat(size)) } else { Message::binary(vec![7u8; size]) };
        c.send(m).unwrap();
        while let Some(b) = c.poll_transmit() {
            out.extend_from_slice(&b);
        }
    }
    out
}

/// Echo `rounds` batches of 16 messages through a server connection, the way an adapter does:
/// read into the read buffer, drain events, send, write out, release idle buffers.
fn echo_rounds(server: &mut Connection, batch: &[u8], rounds: usize) -> usize {
    let now = Instant::now();
    let mut echoed = 0;
    for _ in 0..rounds {
        server.read_buffer().extend_from_slice(batch);
        server.handle_input(now);
        while let Some(Event::Message(m)) = server.poll_event() {
            server.send(m).unwrap();
            echoed += 1;
        }
        let mut slices = [std::io::IoSlice::new(&[]); 16];
        let n = server.transmit_slices(&mut slices);
        let written: usize = slices[..n].iter().map(|s| s.len()).sum();
        server.advance_transmit(written);
        server.release_idle_buffers();
    }
    echoed
}

#[test]
fn steady_state_echo_allocates_nothing_per_message() {
    for (size, text) in [(16usize, false), (512, false), (512, true), (4000, true)] {
        let batch = wire(16, size, text);
        let mut server = Connection::new(Role::Server, Config::default(), Instant::now());
        echo_rounds(&mut server, &batch, 50); // warm up: pool, queues, shared buffer headers
        let before = ALLOCS.load(Ordering::Relaxed);
        let echoed = echo_rounds(&mut server, &batch, 500);
        let allocs = ALLOCS.load(Ordering::Relaxed) - before;
        assert_eq!(echoed, 8000);
        eprintln!("size={size} text={text}: {allocs} allocations");
        assert!(allocs * 1000 < echoed, "{allocs} allocations for {echoed} echoed {size}-byte messages (text={text})");
    }
}

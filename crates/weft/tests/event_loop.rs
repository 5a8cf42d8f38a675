//! The event-driven core (`weft::event_loop`) on each of its backends (epoll and io_uring), over
//! real loopback sockets, against tokio-tungstenite as the independent peer and against raw TCP
//! for what a peer may do wrong: messages of every size and shape, the handshake's answers and
//! bounds, backpressure from a peer that never reads, sessions and graceful stop.
//!
//! One suite (`event_loop/suite.rs`), compiled once per backend: both must behave the same.

mod epoll {
    const BACKEND: weft::event_loop::Backend = weft::event_loop::Backend::Epoll;
    include!("event_loop/suite.rs");
}

#[cfg(target_os = "linux")]
mod io_uring {
    const BACKEND: weft::event_loop::Backend = weft::event_loop::Backend::IoUring;
    include!("event_loop/suite.rs");
}

/// `Backend::Auto` runs io_uring where the kernel has it (CI's must: scripts/test.sh sets
/// `WEFT_REQUIRE_IO_URING`) and says why not otherwise.
#[cfg(target_os = "linux")]
#[test]
fn auto_picks_io_uring_and_says_so() {
    use weft::event_loop::{Backend, Conn, EventLoop, Handler, LoopConfig, Payload};
    struct Nop;
    impl Handler for Nop {
        type Session = ();
        fn upgrade(&mut self, _: &http::Request<()>, _: &mut http::Response<()>) -> Result<(), weft::Rejection> {
            Ok(())
        }
        fn on_message(&mut self, _: &mut (), _: &mut Conn<'_>, _: Payload<'_>) {}
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = LoopConfig { backend: Backend::Auto, ..LoopConfig::default() };
    let ev = EventLoop::new(l, weft::Acceptor::new(), config, Nop).unwrap();
    match ev.fallback() {
        // Without io_uring (an old kernel, a seccomp profile forbidding it): epoll, and why.
        Some(why) if std::env::var_os("WEFT_REQUIRE_IO_URING").is_none() => {
            assert_eq!(ev.backend(), Backend::Epoll);
            assert!(!why.is_empty());
            eprintln!("io_uring unavailable here: {why}");
        }
        _ => {
            assert_eq!(ev.backend(), Backend::IoUring, "fell back: {:?}", ev.fallback());
            assert_eq!(ev.fallback(), None);
        }
    }
    // The default is epoll (bench/RESULTS.md says why).
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    assert_eq!(EventLoop::new(l, weft::Acceptor::new(), LoopConfig::default(), Nop).unwrap().backend(), Backend::Epoll);
}

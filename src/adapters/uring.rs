//! The hub's writes of one chunk of direct frames as one io_uring submission (issue 15,
//! Linux, feature `tokio`).
//!
//! The fan-out server's CPU per delivery was mostly the kernel's, and a good part of it the
//! entry and exit of one `send(2)` per delivery. Here each chunk of
//! [`Shared::drain`](super::server) becomes one `io_uring_enter(2)`: a `SEND` per frame with
//! `MSG_DONTWAIT | MSG_NOSIGNAL`, so a full socket completes at once with `EAGAIN` (as
//! `send(2)` returns it) instead of the ring arming a poll, and every completion is there
//! when the submission returns. The outcomes are then the ones [`DirectOutlet::send`] acts
//! on: all written (reported), part or nothing written (the rest waits in the session's
//! queue and its task is woken), an error (the session's socket fails).
//!
//! Each frame of a batch holds its session's writer lock ([`Held`]) from before the
//! submission until its outcome is settled, so nothing (tungstenite's own writes, the task's
//! flush) slips in between; a second frame for a session already in the batch finds the lock
//! taken and ends the batch first, which keeps that session's frames in order. The ring is
//! the hub's, made on the first chunk; where it cannot be made (no io_uring in this kernel, or
//! a sandbox that forbids it) every frame goes through [`DirectOutlet::send`] as before.

use std::io;
use std::os::fd::AsRawFd;

use bytes::Bytes;
use io_uring::{opcode, types, IoUring};

use super::direct::{Claim, DirectOutlet, Held};
use super::server::DIRECT_CHUNK;
use crate::server::SessionId;

/// Entries of the ring: a batch is at most one chunk of the drain.
const ENTRIES: u32 = 256;

// A chunk of the drain is one submission, so the ring holds one whole; `submit` splits a
// batch anyway should the queue have fewer free slots (a ring made smaller, in tests).
const _: () = assert!(
    DIRECT_CHUNK <= ENTRIES as usize,
    "a chunk of the drain must fit the ring"
);

/// Fewer frames than this go out with one `send(2)` each.
const MIN_BATCH: usize = 4;

/// Submissions retried when `io_uring_enter(2)` is interrupted before giving up on the ring.
const MAX_RETRIES: usize = 64;

/// The hub's writer of direct frames: batched through its ring when it has one.
pub(crate) struct Writer {
    ring: State,
    /// Entries the ring is made with ([`ENTRIES`], fewer in tests).
    entries: u32,
    /// Submissions made, for tests (a chunk of frames is one).
    submissions: u64,
}

enum State {
    Untried,
    Ready(Box<IoUring>),
    /// No ring here (or it failed): one `send(2)` per frame.
    Unavailable,
}

impl Default for Writer {
    fn default() -> Writer {
        Writer {
            ring: State::Untried,
            entries: ENTRIES,
            submissions: 0,
        }
    }
}

impl Writer {
    /// A writer that never makes a ring: the path taken where io_uring is missing.
    #[cfg(test)]
    pub(crate) fn without_ring() -> Writer {
        Writer {
            ring: State::Unavailable,
            ..Writer::default()
        }
    }

    /// A writer with a ring of `entries` entries.
    #[cfg(test)]
    fn with_entries(entries: u32) -> Writer {
        Writer {
            entries,
            ..Writer::default()
        }
    }

    /// Whether it has a ring (making it now if not tried yet).
    #[cfg(test)]
    pub(crate) fn has_ring(&mut self) -> bool {
        ready(&mut self.ring, self.entries).is_some()
    }

    /// Submissions made so far (the seam the tests count batches through).
    #[cfg(test)]
    pub(crate) fn submissions(&self) -> u64 {
        self.submissions
    }

    /// Writes `chunk`'s frames (session, its socket, the frame, the payload length to report)
    /// and adds the payload bytes that left now, per session, to `written`.
    pub(crate) fn write<'a>(
        &mut self,
        chunk: Vec<(SessionId, &'a dyn DirectOutlet, Bytes, usize)>,
        written: &mut Vec<(SessionId, usize)>,
    ) {
        let Writer {
            ring,
            entries,
            submissions,
        } = self;
        if chunk.len() < MIN_BATCH {
            // A reply, or a broadcast to a few: a submission's setup costs more than the
            // syscalls it saves (a pull round trip took ~15 % longer through the ring).
            return super::direct::send_each(chunk, written);
        }
        let Some(uring) = ready(ring, *entries) else {
            return super::direct::send_each(chunk, written);
        };
        let mut batch: Vec<(SessionId, Held<'a>)> = Vec::with_capacity(chunk.len());
        let mut frames = chunk.into_iter();
        let mut outcome = Ok(());
        for (session, direct, framed, report) in frames.by_ref() {
            match direct.claim(framed, report) {
                Claim::Settled => {}
                Claim::Held(held) => batch.push((session, held)),
                Claim::Alone(framed) => {
                    // Its lock is taken (by this batch, for an earlier frame to the same
                    // session; or by its task for a moment): the batch goes first.
                    outcome = submit(uring, submissions, &mut batch, written);
                    let n = direct.send(framed, report);
                    if n > 0 {
                        written.push((session, n));
                    }
                    if outcome.is_err() {
                        break;
                    }
                }
            }
        }
        if outcome.is_ok() {
            outcome = submit(uring, submissions, &mut batch, written);
        }
        if let Err(e) = outcome {
            tracing::debug!(error = %e, "io_uring failed: one send(2) per frame from now on");
            *ring = State::Unavailable;
            super::direct::send_each(frames.collect(), written);
        }
    }
}

/// The ring, made on first use.
fn ready(state: &mut State, entries: u32) -> Option<&mut IoUring> {
    if let State::Untried = state {
        // SUBMIT_ALL: one bad request must not leave the rest of a batch unsubmitted;
        // COOP_TASKRUN: no interrupt to run completion work, which the submission does
        // inline.
        let made = IoUring::builder()
            .setup_submit_all()
            .setup_coop_taskrun()
            .build(entries)
            .or_else(|_| IoUring::builder().setup_submit_all().build(entries));
        *state = match made {
            Ok(ring) => State::Ready(Box::new(ring)),
            Err(e) => {
                tracing::debug!(error = %e, "no io_uring: one send(2) per frame");
                State::Unavailable
            }
        };
    }
    match state {
        State::Ready(ring) => Some(ring),
        _ => None,
    }
}

/// Sends `batch`'s frames and settles each, one submission per as many frames as the
/// submission queue has free slots; `batch` is empty on return. An error: the ring is
/// unusable (the frames' sessions fail, as whether their bytes left is unknown).
fn submit<'a>(
    ring: &mut IoUring,
    submissions: &mut u64,
    batch: &mut Vec<(SessionId, Held<'a>)>,
    written: &mut Vec<(SessionId, usize)>,
) -> io::Result<()> {
    while !batch.is_empty() {
        let room = {
            let queue = ring.submission();
            queue.capacity() - queue.len()
        };
        let rest = (batch.len() > room).then(|| batch.split_off(room));
        let submitted = match room {
            0 => Err(io::Error::other("the submission queue is full")),
            _ => submit_piece(ring, submissions, batch, written),
        };
        if let Err(e) = submitted {
            for (_, held) in batch.drain(..).chain(rest.into_iter().flatten()) {
                held.abandon(&e);
            }
            return Err(e);
        }
        match rest {
            Some(rest) => *batch = rest,
            None => break,
        }
    }
    Ok(())
}

/// Sends `frames` (at most the submission queue's free slots) in one submission, waits for
/// all their completions and settles each; `frames` is empty on return. An error: the ring
/// is unusable.
fn submit_piece<'a>(
    ring: &mut IoUring,
    submissions: &mut u64,
    batch: &mut Vec<(SessionId, Held<'a>)>,
    written: &mut Vec<(SessionId, usize)>,
) -> io::Result<()> {
    {
        let mut queue = ring.submission();
        for (i, (_, held)) in batch.iter().enumerate() {
            let frame = held.frame();
            let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
            let send = opcode::Send::new(types::Fd(held.fd().as_raw_fd()), frame.as_ptr(), len)
                .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                .build()
                .user_data(i as u64);
            // SAFETY: the kernel reads `len` bytes of `frame` and uses the descriptor until
            // the request completes. `frame` is the `Bytes` inside `held`, which stays in
            // `batch` (never moved out, never dropped) until this function has reaped the
            // request's completion below; should the ring fail first, the buffer is leaked
            // rather than freed. The descriptor is borrowed (`BorrowedFd<'a>`) from the socket
            // of the `Direct` that `held` borrows, so it is open and names that socket as long
            // as `held` lives, and the kernel holds its own reference to the socket from when
            // it takes the request.
            let pushed = unsafe { queue.push(&send) };
            pushed.expect("invariant: a piece is at most the queue's free slots");
        }
    }
    *submissions += 1;
    let mut outcomes: Vec<Option<i32>> = vec![None; batch.len()];
    let mut left = batch.len();
    let mut retries = 0;
    while left > 0 {
        if let Err(e) = ring.submit_and_wait(left) {
            let again = matches!(
                e.raw_os_error(),
                Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
            );
            if !again || retries == MAX_RETRIES {
                for (_, held) in batch.drain(..) {
                    held.abandon(&e);
                }
                return Err(e);
            }
            retries += 1;
        }
        for completion in ring.completion() {
            let slot = usize::try_from(completion.user_data())
                .ok()
                .and_then(|i| outcomes.get_mut(i));
            if let Some(slot @ None) = slot {
                *slot = Some(completion.result());
                left -= 1;
            }
        }
    }
    for ((session, held), outcome) in batch.drain(..).zip(outcomes) {
        let outcome = outcome.expect("invariant: the loop above reaped every completion");
        let result = match usize::try_from(outcome) {
            Ok(n) => Ok(n),
            Err(_) => Err(io::Error::from_raw_os_error(-outcome)),
        };
        let n = held.finish(result);
        if n > 0 {
            written.push((session, n));
        }
    }
    Ok(())
}

/// A socket for tests: one end of a Unix stream pair, non-blocking, with its descriptor.
#[cfg(test)]
pub(crate) mod testing {
    use std::io::{self, IoSlice, Read, Write};
    use std::os::fd::{AsFd, BorrowedFd};
    use std::os::unix::net::UnixStream;

    use core::task::{Context, Poll};

    use super::super::direct::RawSocket;

    pub(crate) struct Sock(pub(crate) UnixStream);

    /// Our end (for a `Direct`) and the peer's (to read what left).
    pub(crate) fn pair() -> (Sock, UnixStream) {
        let (ours, peer) = UnixStream::pair().expect("a socket pair");
        ours.set_nonblocking(true).expect("non-blocking");
        peer.set_nonblocking(true).expect("non-blocking");
        (Sock(ours), peer)
    }

    /// Everything the peer can read now.
    pub(crate) fn read_all(peer: &mut UnixStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0; 1 << 16];
        loop {
            match peer.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return got,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Says the test was skipped for want of io_uring; fails it under `CI`.
    pub(crate) fn skipped() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no io_uring on this CI machine: the batched path is untested"
        );
        eprintln!("no io_uring here: skipped");
    }

    impl RawSocket for Sock {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            (&self.0).write_vectored(bufs)
        }
        /// Never: the tests flush again after the peer read.
        fn poll_write_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
        fn fd(&self) -> Option<BorrowedFd<'_>> {
            Some(self.0.as_fd())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{pair, read_all, Sock};
    use super::*;
    use crate::adapters::direct::{frame, Direct, RawSocket};
    use core::task::{Context, Poll};
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn session(index: u32) -> SessionId {
        SessionId {
            index,
            generation: 0,
        }
    }

    /// A writer with a ring, or `None` where this kernel (or sandbox) has no io_uring — a
    /// failure under `CI`, whose machines have it: a skipped test is not a passing one.
    fn with_ring() -> Option<Writer> {
        let mut writer = Writer::default();
        if !writer.has_ring() {
            super::testing::skipped();
            return None;
        }
        Some(writer)
    }

    /// Counts its wake-ups.
    struct Wakes(AtomicUsize);

    impl futures_util::task::ArcWake for Wakes {
        fn wake_by_ref(me: &Arc<Self>) {
            me.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// `n` sessions on Unix socket pairs: our ends as `Direct`s, and the peers.
    fn sessions(n: usize) -> Vec<(Arc<Direct<Sock>>, UnixStream)> {
        (0..n)
            .map(|_| {
                let (ours, peer) = pair();
                (Arc::new(Direct::new(ours)), peer)
            })
            .collect()
    }

    /// The chunk that writes `frames[i]` to session `i` (reporting its length).
    fn chunk<S: RawSocket, P>(
        sessions: &[(Arc<Direct<S>>, P)],
        frames: Vec<Bytes>,
    ) -> Vec<(SessionId, &dyn DirectOutlet, Bytes, usize)> {
        sessions
            .iter()
            .zip(frames)
            .enumerate()
            .map(|(i, ((d, _), f))| {
                let outlet: &dyn DirectOutlet = &**d;
                let len = f.len();
                (session(i as u32), outlet, f, len)
            })
            .collect()
    }

    /// Frames `f0`, `f1`, ... for `n` sessions.
    fn frames(n: usize) -> Vec<Bytes> {
        (0..n).map(|i| frame(format!("f{i}").as_bytes())).collect()
    }

    /// Whether the session's socket failed (its task would end the session).
    fn failed<S: RawSocket>(direct: &Direct<S>) -> bool {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        matches!(direct.poll_drain(&mut cx), Poll::Ready(Err(_)))
    }

    /// Every session got its frame once, whole, and was reported written; none failed.
    fn all_delivered(
        sessions: &mut [(Arc<Direct<Sock>>, UnixStream)],
        frames: &[Bytes],
        written: &[(SessionId, usize)],
    ) {
        let mut written = written.to_vec();
        written.sort();
        let expected: Vec<_> = frames
            .iter()
            .enumerate()
            .map(|(i, f)| (session(i as u32), f.len()))
            .collect();
        assert_eq!(written, expected, "every frame reported written once");
        for (i, ((direct, peer), f)) in sessions.iter_mut().zip(frames).enumerate() {
            assert_eq!(read_all(peer), &f[..], "session {i} got its frame once");
            assert!(!failed(direct), "session {i} goes on");
        }
    }

    /// A chunk of frames for as many sessions leaves in one submission: every peer gets its
    /// frame whole and every payload is reported written.
    #[test]
    fn a_chunk_leaves_in_one_submission() {
        let Some(mut writer) = with_ring() else {
            return;
        };
        let (directs, mut peers): (Vec<_>, Vec<_>) = (0..200)
            .map(|_| {
                let (ours, peer) = pair();
                (Arc::new(Direct::new(ours)), peer)
            })
            .unzip();
        let payload = b"{\"type\":\"change\"}";
        let framed = frame(payload);
        let chunk = directs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let outlet: &dyn DirectOutlet = &**d;
                (session(i as u32), outlet, framed.clone(), payload.len())
            })
            .collect();
        let mut written = Vec::new();
        writer.write(chunk, &mut written);
        assert_eq!(writer.submissions(), 1, "one submission for 200 frames");
        assert_eq!(written.len(), 200);
        assert!(written.iter().all(|&(_, n)| n == payload.len()));
        for peer in &mut peers {
            assert_eq!(read_all(peer), &framed[..]);
        }

        // A reply (fewer frames than MIN_BATCH) is a plain send: no submission.
        let outlet: &dyn DirectOutlet = &*directs[0];
        writer.write(
            vec![(session(0), outlet, framed.clone(), payload.len())],
            &mut written,
        );
        assert_eq!(writer.submissions(), 1, "a lone frame is sent alone");
        assert_eq!(written.len(), 201);
        assert_eq!(read_all(&mut peers[0]), &framed[..]);
    }

    /// A frame the socket takes part of, then a second frame for the same session in the same
    /// chunk: the batch ends before the second, which queues behind the rest of the first,
    /// and both (and a later drain's frame) leave whole and in order once the task flushes. A
    /// full socket queues its frame and wakes the task; a closed one fails the session (and
    /// no SIGPIPE kills us).
    #[test]
    fn partial_sends_keep_a_sessions_frames_in_order() {
        let Some(mut writer) = with_ring() else {
            return;
        };
        let (big, mut big_peer) = pair();
        let big = Arc::new(Direct::new(big));
        let (other, mut other_peer) = pair();
        let other = Arc::new(Direct::new(other));
        let (full, mut full_peer) = pair();
        let full = Arc::new(Direct::new(full));
        let (gone, gone_peer) = pair();
        let gone = Arc::new(Direct::new(gone));
        drop(gone_peer);
        // Fill `full` until it takes nothing more.
        let filler = vec![0u8; 1 << 16];
        let mut filled = 0;
        while let Ok(n) = (&full.socket.0).write(&filler) {
            filled += n;
        }
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = futures_util::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        big.register(&mut cx);
        full.register(&mut cx);

        let first: Vec<u8> = (0..4 << 20).map(|i| b'a' + (i % 26) as u8).collect();
        let first_frame = frame(&first);
        let second_frame = frame(b"second");
        fn outlet(d: &Arc<Direct<Sock>>) -> &dyn DirectOutlet {
            &**d
        }
        let chunk = vec![
            (session(0), outlet(&big), first_frame.clone(), first.len()),
            (session(1), outlet(&other), frame(b"x"), 1),
            (session(2), outlet(&full), frame(b"late"), 4),
            (session(3), outlet(&gone), frame(b"lost"), 4),
            (session(0), outlet(&big), second_frame.clone(), 6),
            (session(1), outlet(&other), frame(b"y"), 1),
        ];
        let mut written = Vec::new();
        writer.write(chunk, &mut written);
        assert_eq!(
            writer.submissions(),
            2,
            "the batch ended before session 0's second frame"
        );
        assert_eq!(written, vec![(session(1), 1), (session(1), 1)]);
        assert!(big.is_stuck(), "the rest of the first frame waits");
        assert!(full.is_stuck(), "EAGAIN: the frame waits");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2, "both tasks woken");
        assert!(
            matches!(gone.poll_drain(&mut cx), Poll::Ready(Err(_))),
            "EPIPE fails it"
        );
        assert_eq!(read_all(&mut other_peer), b"\x81\x01x\x81\x01y");
        // The peer reads, so the socket has room again, but the rest of the first frame still
        // waits: the next drain's frame for that session queues behind it, never around.
        let mut got = read_all(&mut big_peer);
        let third_frame = frame(b"third");
        let next = vec![(session(0), outlet(&big), third_frame.clone(), 5)];
        writer.write(next, &mut written);
        assert_eq!(written.len(), 2, "nothing more left now");

        // The task flushes as the peer reads: the first frame, then the second.
        let mut reported = 0;
        while big.is_stuck() || reported == 0 {
            got.extend(read_all(&mut big_peer));
            if let Poll::Ready(Ok(n)) = big.poll_drain(&mut cx) {
                reported += n;
            }
        }
        got.extend(read_all(&mut big_peer));
        assert_eq!(
            reported,
            first.len() + 6 + 5,
            "reported once wholly written"
        );
        let expected: Vec<u8> = [&first_frame[..], &second_frame[..], &third_frame[..]].concat();
        assert!(
            got == expected,
            "in order, whole ({} of {} bytes)",
            got.len(),
            expected.len()
        );

        assert_eq!(read_all(&mut full_peer).len(), filled);
        assert_eq!(full.poll_drain(&mut cx), Poll::Ready(Ok(4)));
        assert_eq!(read_all(&mut full_peer), b"\x81\x04late");
    }

    /// A chunk larger than the ring's free slots is split: one submission per ringful, each
    /// reaped before the next is pushed (without the check, the fifth push finds the queue
    /// full).
    #[test]
    fn a_chunk_larger_than_the_ring_is_split() {
        let mut writer = Writer::with_entries(4);
        if !writer.has_ring() {
            super::testing::skipped();
            return;
        }
        let mut sessions = sessions(10);
        let mut written = Vec::new();
        writer.write(chunk(&sessions, frames(10)), &mut written);
        assert_eq!(writer.submissions(), 3, "4 + 4 + 2");
        all_delivered(&mut sessions, &frames(10), &written);
        assert!(writer.has_ring());
    }

    /// Without a ring (a kernel or sandbox without io_uring) each frame is its own `send(2)`,
    /// with the same outcome.
    #[test]
    fn without_a_ring_each_frame_is_sent_alone() {
        let mut writer = Writer::without_ring();
        let pairs: Vec<(Arc<Direct<Sock>>, UnixStream)> = (0..3)
            .map(|_| {
                let (ours, peer) = pair();
                (Arc::new(Direct::new(ours)), peer)
            })
            .collect();
        let chunk = pairs
            .iter()
            .enumerate()
            .map(|(i, (d, _))| {
                let outlet: &dyn DirectOutlet = &**d;
                (session(i as u32), outlet, frame(b"hi"), 2)
            })
            .collect();
        let mut written = Vec::new();
        writer.write(chunk, &mut written);
        assert_eq!(writer.submissions(), 0);
        assert_eq!(written.len(), 3);
        for (_, mut peer) in pairs {
            assert_eq!(read_all(&mut peer), b"\x81\x02hi");
        }
    }

    /// `n` connected TCP pairs over loopback: our ends as the tokio adapter's sockets
    /// (registered with `rt`), the peers' blocking.
    fn tcp_sessions(
        rt: &tokio::runtime::Runtime,
        n: usize,
    ) -> Vec<(Arc<Direct<tokio::net::TcpStream>>, std::net::TcpStream)> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _runtime = rt.enter();
        (0..n)
            .map(|_| {
                let peer = std::net::TcpStream::connect(addr).unwrap();
                let (ours, _) = listener.accept().unwrap();
                ours.set_nonblocking(true).unwrap();
                let ours = tokio::net::TcpStream::from_std(ours).unwrap();
                (Arc::new(Direct::new(ours)), peer)
            })
            .collect()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap()
    }

    /// No send of the direct write path raises SIGPIPE (each passes `MSG_NOSIGNAL`), which
    /// would kill a host that does not ignore it. The test runtime ignores it, as every Rust
    /// `main` does, which would hide one: so this test runs itself again in a child process
    /// that restores the default, where a SIGPIPE kills it.
    #[test]
    fn a_send_to_a_closed_socket_raises_no_sigpipe() {
        const CHILD: &str = "SYNCMUX_TEST_SIGPIPE_CHILD";
        if std::env::var_os(CHILD).is_none() {
            use std::os::unix::process::ExitStatusExt;
            let path = concat!(
                module_path!(),
                "::a_send_to_a_closed_socket_raises_no_sigpipe"
            );
            // Test names leave out the crate's.
            let name = path.split_once("::").map_or(path, |(_, name)| name);
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--test-threads=1", "--nocapture"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&child.stdout);
            let stderr = String::from_utf8_lossy(&child.stderr);
            assert_eq!(
                child.status.signal(),
                None,
                "the child died of a signal (SIGPIPE is {}): {stderr}",
                libc::SIGPIPE
            );
            assert!(child.status.success(), "{stdout}{stderr}");
            assert!(
                stdout.contains("1 passed"),
                "the child ran the test: {stdout}"
            );
            return;
        }
        // SAFETY: sets a disposition (no handler); this process runs this test alone.
        let before = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        assert_ne!(before, libc::SIG_ERR);
        let rt = runtime();
        let sessions = tcp_sessions(&rt, 4);
        for (direct, _) in &sessions {
            // Our own end shut: the next send fails with EPIPE, at once and every time.
            socket2::SockRef::from(&direct.socket)
                .shutdown(std::net::Shutdown::Write)
                .unwrap();
        }
        let socket = &sessions[0].0.socket;
        let epipe = |r: io::Result<usize>| r.unwrap_err().raw_os_error() == Some(libc::EPIPE);
        // (Called through the trait: tokio's `TcpStream` has a `try_write_vectored` of its own.)
        assert!(epipe(RawSocket::send_now(socket, b"x")), "send(2)");
        rt.block_on(socket.writable()).unwrap();
        let one = [io::IoSlice::new(b"x")];
        assert!(
            epipe(RawSocket::try_write_vectored(socket, &one)),
            "send(2)"
        );
        let two = [io::IoSlice::new(b"x"), io::IoSlice::new(b"y")];
        assert!(
            epipe(RawSocket::try_write_vectored(socket, &two)),
            "sendmsg(2)"
        );
        // And the ring's SEND, where there is a ring (recent kernels add MSG_NOSIGNAL to
        // io_uring's sends themselves; the writer's flag is for the others).
        let mut writer = Writer::default();
        if writer.has_ring() {
            writer.write(chunk(&sessions, frames(4)), &mut Vec::new());
            assert_eq!(writer.submissions(), 1);
            assert!(sessions.iter().all(|(d, _)| failed(d)));
        }
    }
}

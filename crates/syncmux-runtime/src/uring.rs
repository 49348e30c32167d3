//! The hub's writes of one chunk of direct frames as one io_uring submission (Linux,
//! feature `tokio`).
//!
//! The fan-out server's CPU per delivery was mostly the kernel's, and a good part of it the
//! entry and exit of one `send(2)` per delivery. Here each chunk of
//! [`Shared::drain`](crate::server) becomes one `io_uring_enter(2)`: a `SEND` per frame with
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
//! the hub's, made on the first chunk.
//!
//! Soundness (the crate's only `unsafe`): a request pushed to the ring names a frame's buffer
//! and its socket, and both must outlive it. [`InFlight`] holds a submission's frames from
//! before the first push until every request is reaped; if it is dropped first (an error, or
//! a panic unwinding through), it retires the ring (closing it, so that no later
//! `io_uring_enter(2)` takes a request published and never taken) and leaks, never frees, the
//! buffer of every request that may be in flight. A submission never holds more requests
//! than the queue has free slots.
//!
//! Where there is no ring, one `send(2)` per frame through [`DirectOutlet::send`], as before:
//! no io_uring in this kernel, a sandbox that forbids it, a ring that cannot `SEND` (an
//! emulated or restricted io_uring, found by a probe at setup or by a `SEND` answered
//! `EINVAL` or `EOPNOTSUPP`), or an `io_uring_enter(2)` that fails for good. The writer then
//! says so once, at `info`, with the reason; the frames the ring never sent go by `send(2)`.

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;

use bytes::Bytes;
use io_uring::{opcode, squeue, types, IoUring, Probe};

use crate::direct::{send_each, Claim, DirectOutlet, Held, Slot};
use crate::hub::DIRECT_CHUNK;

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

/// Submissions retried when `io_uring_enter(2)` finds the kernel short of memory (`EAGAIN`)
/// or its completion queue overflowing (`EBUSY`), before giving up on the ring. An
/// interrupted one (`EINTR`) is retried without a limit: a signal says nothing of the ring.
const MAX_RETRIES: usize = 64;

/// The hub's writer of direct frames: batched through its ring when it has one.
pub(crate) struct Writer<K: Kernel = Real> {
    ring: State,
    kernel: K,
    /// Entries the ring is made with ([`ENTRIES`], fewer in tests).
    entries: u32,
    /// Submissions made, for tests (a chunk of frames is one).
    submissions: u64,
}

enum State {
    Untried,
    Ready(Box<IoUring>),
    /// No ring here (or it was retired): one `send(2)` per frame.
    Unavailable,
}

impl Default for Writer {
    fn default() -> Writer {
        Writer {
            ring: State::Untried,
            kernel: Real,
            entries: ENTRIES,
            submissions: 0,
        }
    }
}

/// What the writer asks of io_uring. [`Real`] asks the kernel (each method is the call it
/// wraps, inlined); the tests' `Faults` fails on cue, to reach the paths a healthy kernel
/// never takes.
pub(crate) trait Kernel {
    /// Whether `ring` can `SEND`: an emulated or restricted io_uring may set up and not.
    fn can_send(&mut self, ring: &IoUring) -> bool;
    /// The request pushed for a frame: `send` itself.
    fn request(&mut self, send: squeue::Entry) -> squeue::Entry;
    /// `io_uring_enter(2)`: submits what the queue holds and waits for `want` completions.
    fn enter(&mut self, ring: &mut IoUring, want: usize) -> io::Result<usize>;
    /// Hands each completion that arrived to `each`: its user data and its result.
    fn reap(&mut self, ring: &mut IoUring, each: impl FnMut(u64, i32));
}

/// The kernel itself.
pub(crate) struct Real;

impl Kernel for Real {
    fn can_send(&mut self, ring: &IoUring) -> bool {
        // A kernel without probes (before 5.6) has no SEND either.
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe).is_ok()
            && probe.is_supported(opcode::Send::CODE)
    }

    #[inline]
    fn request(&mut self, send: squeue::Entry) -> squeue::Entry {
        send
    }

    #[inline]
    fn enter(&mut self, ring: &mut IoUring, want: usize) -> io::Result<usize> {
        ring.submit_and_wait(want)
    }

    #[inline]
    fn reap(&mut self, ring: &mut IoUring, mut each: impl FnMut(u64, i32)) {
        for completion in ring.completion() {
            each(completion.user_data(), completion.result());
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
}

impl<K: Kernel> Writer<K> {
    /// A writer asking `kernel`, with a ring of `entries` entries.
    #[cfg(test)]
    fn with_kernel(kernel: K, entries: u32) -> Writer<K> {
        Writer {
            ring: State::Untried,
            kernel,
            entries,
            submissions: 0,
        }
    }

    /// Whether it has a ring (making it now if not tried yet).
    #[cfg(test)]
    pub(crate) fn has_ring(&mut self) -> bool {
        self.ready()
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
        chunk: Vec<(Slot, &'a dyn DirectOutlet, Bytes, usize)>,
        written: &mut Vec<(Slot, usize)>,
    ) {
        // Fewer than MIN_BATCH frames (a reply, a broadcast to a few): a submission's setup
        // costs more than the syscalls it saves (a pull round trip took ~15 % longer
        // through the ring).
        if chunk.len() < MIN_BATCH || !self.ready() {
            return send_each(chunk, written);
        }
        let mut batch: Vec<(Slot, Held<'a>)> = Vec::with_capacity(chunk.len());
        let mut frames = chunk.into_iter();
        for (session, direct, framed, report) in frames.by_ref() {
            match direct.claim(framed, report) {
                Claim::Settled => {}
                Claim::Held(held) => batch.push((session, held)),
                Claim::Alone(framed) => {
                    // Its lock is taken (by this batch, for an earlier frame to the same
                    // session; or by its task for a moment): the batch goes first.
                    self.submit(&mut batch, written);
                    let n = direct.send(framed, report);
                    if n > 0 {
                        written.push((session, n));
                    }
                    if !matches!(self.ring, State::Ready(_)) {
                        break;
                    }
                }
            }
        }
        self.submit(&mut batch, written);
        // Left over only should the ring have retired: one `send(2)` each.
        send_each(frames, written);
    }

    /// Whether there is a ring, making it on first use.
    fn ready(&mut self) -> bool {
        if let State::Untried = self.ring {
            // SUBMIT_ALL: one bad request must not leave the rest of a batch unsubmitted;
            // COOP_TASKRUN: no interrupt to run completion work, which the submission does
            // inline.
            let made = IoUring::builder()
                .setup_submit_all()
                .setup_coop_taskrun()
                .build(self.entries)
                .or_else(|_| IoUring::builder().setup_submit_all().build(self.entries));
            match made {
                Ok(ring) if self.kernel.can_send(&ring) => {
                    self.ring = State::Ready(Box::new(ring));
                }
                Ok(_) => retire(&mut self.ring, &"this io_uring has no SEND"),
                Err(e) => retire(&mut self.ring, &format_args!("no io_uring here: {e}")),
            }
        }
        matches!(self.ring, State::Ready(_))
    }

    /// Sends `batch`'s frames through the ring and settles each; `batch` is empty on return.
    /// One submission per as many frames as the submission queue has free slots; without a
    /// ring (it retired, now or before), one `send(2)` per frame.
    fn submit<'a>(&mut self, batch: &mut Vec<(Slot, Held<'a>)>, written: &mut Vec<(Slot, usize)>) {
        while !batch.is_empty() {
            let room = match &mut self.ring {
                State::Ready(ring) => {
                    let queue = ring.submission();
                    // Empty between submissions (each is reaped whole, or the ring retires):
                    // requests of no batch there would share our user data and be sent too.
                    queue.is_empty().then(|| queue.capacity())
                }
                _ => None,
            };
            let Some(room) = room.filter(|&room| room > 0) else {
                retire(
                    &mut self.ring,
                    &"its submission queue held requests of no batch",
                );
                for (session, held) in batch.drain(..) {
                    let n = held.send_alone();
                    if n > 0 {
                        written.push((session, n));
                    }
                }
                return;
            };
            let rest = (batch.len() > room).then(|| batch.split_off(room));
            self.submit_piece(batch, written);
            match rest {
                Some(rest) => *batch = rest,
                None => return,
            }
        }
    }

    /// Sends `frames` (at most the submission queue's free slots) in one submission, waits
    /// for all their completions and settles each; `frames` is empty on return.
    fn submit_piece<'a>(
        &mut self,
        frames: &mut Vec<(Slot, Held<'a>)>,
        written: &mut Vec<(Slot, usize)>,
    ) {
        let Writer {
            ring,
            kernel,
            submissions,
            ..
        } = self;
        let mut flight = InFlight {
            outcomes: vec![None; frames.len()],
            state: ring,
            frames,
            pushed: 0,
            left: 0,
        };
        flight.push(kernel);
        *submissions += 1;
        let mut retries = 0;
        while flight.left > 0 {
            match flight.enter(kernel) {
                Ok(_) => {}
                // Interrupted before it submitted anything, or while waiting: nothing is
                // lost, and a process that takes many signals must not lose its ring.
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY))
                        && retries < MAX_RETRIES =>
                {
                    retries += 1;
                }
                Err(e) => return flight.abort(kernel, &e, written),
            }
            flight.reap(kernel);
        }
        flight.settle(written);
    }
}

/// Gives the ring up for good: each frame is one `send(2)` from now on. Dropping the ring
/// closes it, so that no `io_uring_enter(2)` ever takes a request published and not taken.
/// Said once (a writer retires once), at `info`: a server without its ring spends more CPU
/// per delivery, and its operator should know why.
fn retire(state: &mut State, why: &dyn fmt::Display) {
    if let State::Unavailable = state {
        return;
    }
    *state = State::Unavailable;
    tracing::info!(reason = %why, "direct frames go out by send(2), one per frame");
}

/// The ring of a submission under way.
fn ring_of(state: &mut State) -> &mut IoUring {
    match state {
        State::Ready(ring) => Some(&mut **ring),
        _ => None,
    }
    .expect("invariant: a submission keeps its ring until it settles or aborts")
}

/// One submission's frames, from before the first push until every request is reaped and
/// every frame settled; see the module's docs for why it retires the ring when dropped
/// before that.
struct InFlight<'s, 'f, 'a> {
    state: &'s mut State,
    /// Each frame's request has the frame's index as its user data. Settled from the back,
    /// so that what is left keeps its indices.
    frames: &'f mut Vec<(Slot, Held<'a>)>,
    /// Each request's completion result, once reaped.
    outcomes: Vec<Option<i32>>,
    /// Requests pushed: those of `frames[..pushed]`, less the ones a closed ring never took.
    pushed: usize,
    /// Requests pushed and not reaped.
    left: usize,
}

impl InFlight<'_, '_, '_> {
    /// Pushes a request for every frame.
    fn push<K: Kernel>(&mut self, kernel: &mut K) {
        let mut queue = ring_of(self.state).submission();
        for (i, (_, held)) in self.frames.iter().enumerate() {
            let frame = held.frame();
            let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
            let send = opcode::Send::new(types::Fd(held.fd().as_raw_fd()), frame.as_ptr(), len)
                .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                .build()
                .user_data(i as u64);
            let request = kernel.request(send);
            // SAFETY: the kernel reads `len` bytes of `frame` and uses the descriptor from
            // when it takes the request until it completes it. `frame` is the `Bytes` inside
            // `held`, and `held` stays in `self.frames` (never moved out, never dropped) until
            // its completion is reaped, or until the ring is closed without having taken it;
            // should `self` be dropped before that (an error, a panic), its `Drop` closes the
            // ring first and leaks the buffer. The descriptor is borrowed (`BorrowedFd<'a>`)
            // from the socket of the `Direct` that `held` borrows, so it is open and names that
            // socket while `held` lives, and the kernel holds its own reference to the socket
            // from when it takes the request.
            let pushed = unsafe { queue.push(&request) };
            pushed.expect("invariant: a piece is at most the queue's free slots");
            self.pushed += 1;
            self.left += 1;
        }
    }

    /// `io_uring_enter(2)` for the completions not reaped yet.
    fn enter<K: Kernel>(&mut self, kernel: &mut K) -> io::Result<usize> {
        kernel.enter(ring_of(self.state), self.left)
    }

    /// Takes in the completions that arrived.
    fn reap<K: Kernel>(&mut self, kernel: &mut K) {
        let State::Ready(ring) = self.state else {
            return;
        };
        let (outcomes, left) = (&mut self.outcomes, &mut self.left);
        kernel.reap(ring, |user_data, result| {
            let slot = usize::try_from(user_data)
                .ok()
                .and_then(|i| outcomes.get_mut(i));
            if let Some(slot @ None) = slot {
                *slot = Some(result);
                *left -= 1;
            }
        });
    }

    /// `io_uring_enter(2)` failed for good: what completed is settled, the ring retires, what
    /// it never took goes by `send(2)`, and what it took and did not complete fails its
    /// session.
    fn abort<K: Kernel>(
        mut self,
        kernel: &mut K,
        why: &io::Error,
        written: &mut Vec<(Slot, usize)>,
    ) {
        self.reap(kernel);
        // The kernel takes requests in order from the head of the queue, which held only
        // ours: the ones it never took are the last pushed.
        let untaken = ring_of(self.state).submission().len().min(self.pushed);
        retire(self.state, &format_args!("io_uring_enter: {why}"));
        // The ring is closed: nothing takes them now, and their frames are ours again.
        self.pushed -= untaken;
        self.left = self.left.saturating_sub(untaken);
        self.settle(written);
    }

    /// Settles every frame: with its request's outcome, or by `send(2)` when the ring never
    /// took it or cannot `SEND` (which retires the ring), or failing its session when its
    /// request may still be in flight (the ring failed).
    fn settle(&mut self, written: &mut Vec<(Slot, usize)>) {
        let mut refused = None;
        while let Some((session, held)) = self.frames.pop() {
            let i = self.frames.len();
            let n = match self.outcomes[i] {
                // An emulated or restricted io_uring that sets up and cannot SEND: the
                // request is done, and the frame is ours to send.
                Some(result) if result == -libc::EINVAL || result == -libc::EOPNOTSUPP => {
                    refused = Some(result);
                    held.send_alone()
                }
                Some(result) => held.finish(match usize::try_from(result) {
                    Ok(n) => Ok(n),
                    Err(_) => Err(io::Error::from_raw_os_error(-result)),
                }),
                None if i >= self.pushed => held.send_alone(),
                None => {
                    held.abandon(&"the ring failed with the frame in flight");
                    0
                }
            };
            if n > 0 {
                written.push((session, n));
            }
        }
        if let Some(result) = refused {
            let why = io::Error::from_raw_os_error(-result);
            retire(self.state, &format_args!("SEND answered: {why}"));
        }
    }
}

impl Drop for InFlight<'_, '_, '_> {
    /// Left unsettled (an error or a panic between the first push and the last settle): the
    /// ring retires if requests may be in flight, whose buffers leak; every session whose
    /// frame is left fails, as whether its frame left is unknown.
    fn drop(&mut self) {
        if self.frames.is_empty() {
            return;
        }
        if self.left > 0 {
            // First: once the ring is closed, what it never took is never taken.
            retire(self.state, &"a submission unwound with requests in flight");
        }
        while let Some((_, held)) = self.frames.pop() {
            let i = self.frames.len();
            if i < self.pushed && self.outcomes[i].is_none() {
                held.abandon(&"the submission unwound with the frame in flight");
            } else {
                held.fail(&"the submission unwound before the frame was settled");
            }
        }
    }
}

/// A socket for tests: one end of a Unix stream pair, non-blocking, with its descriptor.
#[cfg(test)]
pub(crate) mod testing {
    use std::io::{self, IoSlice, Read, Write};
    use std::os::fd::{AsFd, BorrowedFd};
    use std::os::unix::net::UnixStream;

    use core::task::{Context, Poll};

    use crate::direct::RawSocket;

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
    use crate::direct::{frame, Direct, RawSocket};
    use core::task::{Context, Poll};
    use std::collections::VecDeque;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    fn session(index: u32) -> Slot {
        index as Slot
    }

    /// A writer with a ring, or `None` where this kernel (or sandbox) has no io_uring — a
    /// failure under `CI`, whose machines have it: a skipped test is not a passing one.
    fn with_ring() -> Option<Writer> {
        ring_with(Real, ENTRIES)
    }

    /// A writer asking `kernel`, with a ring of `entries` entries; `None` as for
    /// [`with_ring`].
    fn ring_with<K: Kernel>(kernel: K, entries: u32) -> Option<Writer<K>> {
        let mut writer = Writer::with_kernel(kernel, entries);
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

    /// One chunk of `n` frames to `n` new sessions written through a ring whose kernel fails
    /// as `faults` says: the writer, the sessions, the writes reported and the lines logged;
    /// `None` (skipped) where this kernel has no io_uring.
    fn wrote(faults: Faults, n: usize) -> Option<Wrote> {
        let mut writer = ring_with(faults, ENTRIES)?;
        let sessions = sessions(n);
        let mut written = Vec::new();
        let ((), lines) = logged(|| writer.write(chunk(&sessions, frames(n)), &mut written));
        Some((writer, sessions, written, lines))
    }

    /// What [`wrote`] gives.
    type Wrote = (
        Writer<Faults>,
        Vec<(Arc<Direct<Sock>>, UnixStream)>,
        Vec<(Slot, usize)>,
        Vec<String>,
    );

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
    ) -> Vec<(Slot, &dyn DirectOutlet, Bytes, usize)> {
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
        written: &[(Slot, usize)],
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

    /// A frame whose buffer says when it is freed, and that flag.
    fn tracked(payload: &[u8]) -> (Bytes, Arc<AtomicBool>) {
        struct Owner(Vec<u8>, Arc<AtomicBool>);
        impl AsRef<[u8]> for Owner {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }
        impl Drop for Owner {
            fn drop(&mut self) {
                self.1.store(true, Ordering::SeqCst);
            }
        }
        let freed = Arc::new(AtomicBool::new(false));
        let owner = Owner(frame(payload).to_vec(), freed.clone());
        (Bytes::from_owner(owner), freed)
    }

    /// What `f` logs at `info` and above, a line per event.
    fn logged<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl Write for Lines {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .without_time()
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        (out, text.lines().map(str::to_owned).collect())
    }

    /// What one `io_uring_enter(2)` of [`Faults`] does instead of the real call.
    enum Enter {
        /// Fails with this errno, having taken nothing.
        Fail(i32),
        /// Takes this many requests and waits for none, then succeeds (`None`) or fails
        /// with the errno.
        Take(u32, Option<i32>),
    }

    /// A kernel that fails on cue: the real one, but for what its fields script.
    #[derive(Default)]
    struct Faults {
        /// The probe finds no SEND.
        no_send: bool,
        /// What the next calls of `io_uring_enter(2)` do, in order (then the real call).
        enters: VecDeque<Enter>,
        /// Panics making this request (counting from 0 over every submission).
        panic_at: Option<usize>,
        /// Requests (by user data) answered with this errno, unsent: a NOP goes instead.
        refuse: Vec<(u64, i32)>,
        /// Requests of `refuse` turned NOPs, their completions to rewrite.
        refused: Vec<(u64, i32)>,
        /// Completions (by user data) held back for one reap: they come after a later
        /// `io_uring_enter(2)`.
        late: Vec<u64>,
        /// Completions (by user data) that never come: their requests stay in flight.
        lost: Vec<u64>,
        /// Completions held back, and the number lost, which the real call must not wait
        /// for.
        held: Vec<(u64, i32)>,
        swallowed: usize,
        /// Requests made and calls of `io_uring_enter(2)`.
        requests: usize,
        enters_made: usize,
    }

    impl Kernel for Faults {
        fn can_send(&mut self, ring: &IoUring) -> bool {
            !self.no_send && Real.can_send(ring)
        }

        fn request(&mut self, send: squeue::Entry) -> squeue::Entry {
            let n = self.requests;
            self.requests += 1;
            if self.panic_at == Some(n) {
                panic!("injected: a panic with requests pushed");
            }
            let user_data = send.get_user_data();
            if let Some(at) = self.refuse.iter().position(|&(u, _)| u == user_data) {
                self.refused.push(self.refuse.remove(at));
                return opcode::Nop::new().build().user_data(user_data);
            }
            send
        }

        fn enter(&mut self, ring: &mut IoUring, want: usize) -> io::Result<usize> {
            self.enters_made += 1;
            match self.enters.pop_front() {
                Some(Enter::Fail(errno)) => Err(io::Error::from_raw_os_error(errno)),
                Some(Enter::Take(n, then)) => {
                    // SAFETY: no pointers, only counts: takes `n` of the requests the queue
                    // holds (which the writer pushed), waiting for no completion.
                    let taken = unsafe { ring.submitter().enter::<libc::sigset_t>(n, 0, 0, None) }?;
                    match then {
                        Some(errno) => Err(io::Error::from_raw_os_error(errno)),
                        None => Ok(taken),
                    }
                }
                None => ring.submit_and_wait(want.saturating_sub(self.held.len() + self.swallowed)),
            }
        }

        fn reap(&mut self, ring: &mut IoUring, mut each: impl FnMut(u64, i32)) {
            for (user_data, result) in self.held.drain(..) {
                each(user_data, result);
            }
            for completion in ring.completion() {
                let (user_data, mut result) = (completion.user_data(), completion.result());
                if let Some(at) = self.refused.iter().position(|&(u, _)| u == user_data) {
                    result = -self.refused.remove(at).1;
                }
                if let Some(at) = self.late.iter().position(|&u| u == user_data) {
                    self.late.remove(at);
                    self.held.push((user_data, result));
                } else if let Some(at) = self.lost.iter().position(|&u| u == user_data) {
                    self.lost.remove(at);
                    self.swallowed += 1;
                } else {
                    each(user_data, result);
                }
            }
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
    /// and both (and a later drain's frame, claimed by a later batch) leave whole and in order
    /// once the task flushes. A full socket queues its frame and wakes the task; a closed one
    /// fails the session.
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
        let (fresh, mut fresh_peer) = pair();
        let fresh = Arc::new(Direct::new(fresh));
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
        // waits: the next drain's frame for that session queues behind it, never around. That
        // drain is a batch (MIN_BATCH frames), so the frame is claimed while others wait.
        let mut got = read_all(&mut big_peer);
        let third_frame = frame(b"third");
        let next = vec![
            (session(0), outlet(&big), third_frame.clone(), 5),
            (session(1), outlet(&other), frame(b"z"), 1),
            (session(2), outlet(&full), frame(b"later"), 5),
            (session(4), outlet(&fresh), frame(b"w"), 1),
        ];
        writer.write(next, &mut written);
        assert_eq!(writer.submissions(), 3, "through the ring");
        written[2..].sort();
        assert_eq!(
            written[2..],
            [(session(1), 1), (session(4), 1)],
            "nothing more left now: the frames of sessions 0 and 2 wait behind theirs"
        );
        assert_eq!(read_all(&mut other_peer), b"\x81\x01z");
        assert_eq!(read_all(&mut fresh_peer), b"\x81\x01w");

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
        assert_eq!(full.poll_drain(&mut cx), Poll::Ready(Ok(4 + 5)));
        assert_eq!(read_all(&mut full_peer), b"\x81\x04late\x81\x05later");
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

    /// A chunk larger than the ring's free slots is split: one submission per ringful, each
    /// reaped before the next is pushed (without the check, the fifth push finds the queue
    /// full).
    #[test]
    fn a_chunk_larger_than_the_ring_is_split() {
        let Some(mut writer) = ring_with(Real, 4) else {
            return;
        };
        let mut sessions = sessions(10);
        let mut written = Vec::new();
        writer.write(chunk(&sessions, frames(10)), &mut written);
        assert_eq!(writer.submissions(), 3, "4 + 4 + 2");
        all_delivered(&mut sessions, &frames(10), &written);
        assert!(writer.has_ring());
    }

    /// A panic with requests pushed and not submitted (the submission queue publishes them
    /// as it unwinds): the ring retires, so that the next submission cannot hand the kernel
    /// those requests' buffers and descriptors; the pushed frames' buffers are never freed;
    /// every session of the batch fails, its frame's fate unknown to the state machine.
    #[test]
    fn a_panic_mid_batch_retires_the_ring_and_leaks_what_was_pushed() {
        let faults = Faults {
            panic_at: Some(2),
            ..Faults::default()
        };
        let Some(mut writer) = ring_with(faults, ENTRIES) else {
            return;
        };
        let mut sessions = sessions(5);
        let (framed, freed): (Vec<_>, Vec<_>) =
            (0..5).map(|i| tracked(format!("f{i}").as_bytes())).unzip();
        let mut written = Vec::new();
        let unwound = catch_unwind(AssertUnwindSafe(|| {
            writer.write(chunk(&sessions, framed), &mut written)
        }));
        assert!(unwound.is_err(), "the injected panic");
        assert!(!writer.has_ring(), "the ring retired");
        let freed: Vec<bool> = freed.iter().map(|f| f.load(Ordering::SeqCst)).collect();
        assert_eq!(
            freed,
            [false, false, true, true, true],
            "the two pushed frames' buffers leak, the others are freed"
        );
        assert!(written.is_empty());
        for (i, (direct, peer)) in sessions.iter_mut().enumerate() {
            assert!(failed(direct), "session {i} fails");
            assert!(read_all(peer).is_empty(), "nothing went out to session {i}");
        }
        assert_eq!(writer.kernel.enters_made, 0);

        // The hub goes on (past its poisoned lock): one send(2) per frame now.
        let mut others = self::sessions(4);
        let mut written = Vec::new();
        writer.write(chunk(&others, frames(4)), &mut written);
        assert_eq!(writer.submissions(), 0, "none, then or since");
        all_delivered(&mut others, &frames(4), &written);
        for (direct, peer) in &mut sessions {
            assert!(failed(direct));
            assert!(read_all(peer).is_empty(), "nor later");
        }
    }

    /// `io_uring_enter(2)` fails for good after the kernel took two of six requests: those
    /// two complete as usual, the ring retires inside the submission, and the four it never
    /// took go by send(2): no session fails. Said once, at `info`, with the reason.
    #[test]
    fn a_fatal_enter_error_sends_what_the_kernel_never_took_by_send2() {
        let faults = Faults {
            enters: [Enter::Take(2, Some(libc::EFAULT))].into(),
            ..Faults::default()
        };
        let Some((mut writer, mut sessions, written, lines)) = wrote(faults, 6) else {
            return;
        };
        // And the next chunk: by send(2), said no more.
        let ((), more) = logged(|| writer.write(chunk(&sessions[..4], frames(4)), &mut Vec::new()));
        assert!(more.is_empty(), "{more:?}");
        assert_eq!(writer.submissions(), 1);
        assert_eq!(writer.kernel.enters_made, 1, "not called again");
        assert!(!writer.has_ring(), "retired");
        let next: Vec<Bytes> = frames(4);
        let mut got: Vec<Vec<u8>> = sessions.iter_mut().map(|(_, p)| read_all(p)).collect();
        for (i, f) in frames(6).iter().enumerate() {
            let mut expected = f.to_vec();
            if let Some(n) = next.get(i) {
                expected.extend_from_slice(n);
            }
            assert_eq!(got[i], expected, "session {i}: its frames, once each");
            got[i].clear();
        }
        let mut reported = written.clone();
        reported.sort();
        let expected: Vec<_> = frames(6)
            .iter()
            .enumerate()
            .map(|(i, f)| (session(i as u32), f.len()))
            .collect();
        assert_eq!(reported, expected);
        assert!(sessions.iter().all(|(d, _)| !failed(d)), "no session fails");
        assert_eq!(lines.len(), 1, "said once: {lines:?}");
        assert!(lines[0].contains("INFO"), "{lines:?}");
        assert!(
            lines[0].contains("io_uring_enter: Bad address"),
            "{lines:?}"
        );
    }

    /// The ring fails while a request it took has not completed: the request may still read
    /// its frame, so that buffer is never freed, and its session fails (whether its bytes
    /// left is unknown); the requests that completed are settled as usual.
    #[test]
    fn a_request_in_flight_when_the_ring_fails_keeps_its_buffer_and_fails_its_session() {
        let faults = Faults {
            enters: [Enter::Take(4, None), Enter::Fail(libc::EFAULT)].into(),
            lost: vec![1],
            ..Faults::default()
        };
        let Some(mut writer) = ring_with(faults, ENTRIES) else {
            return;
        };
        let sessions = sessions(4);
        let (framed, freed): (Vec<_>, Vec<_>) =
            (0..4).map(|i| tracked(format!("f{i}").as_bytes())).unzip();
        let lens: Vec<usize> = framed.iter().map(Bytes::len).collect();
        let mut written = Vec::new();
        writer.write(chunk(&sessions, framed), &mut written);
        assert!(!writer.has_ring(), "retired");
        written.sort();
        assert_eq!(
            written,
            [0, 2, 3].map(|i| (session(i), lens[i as usize])),
            "the completed ones are written"
        );
        let freed: Vec<bool> = freed.iter().map(|f| f.load(Ordering::SeqCst)).collect();
        assert_eq!(freed, [true, false, true, true], "the one in flight leaks");
        let failed: Vec<bool> = sessions.iter().map(|(d, _)| failed(d)).collect();
        assert_eq!(failed, [false, true, false, false]);
    }

    /// An interrupted `io_uring_enter(2)` is made again however often it is interrupted: a
    /// process that takes many signals keeps its ring.
    #[test]
    fn an_interrupted_enter_is_retried_without_a_limit() {
        let faults = Faults {
            enters: (0..2 * MAX_RETRIES)
                .map(|_| Enter::Fail(libc::EINTR))
                .collect(),
            ..Faults::default()
        };
        let Some((mut writer, mut sessions, written, _)) = wrote(faults, 4) else {
            return;
        };
        assert_eq!(writer.kernel.enters_made, 2 * MAX_RETRIES + 1);
        assert!(writer.has_ring(), "kept");
        assert_eq!(writer.submissions(), 1);
        all_delivered(&mut sessions, &frames(4), &written);
    }

    /// `EAGAIN` and `EBUSY` (the kernel short of memory, the completion queue overflowing)
    /// are retried a few times; past [`MAX_RETRIES`] the ring retires and the frames it never
    /// took go by send(2).
    #[test]
    fn a_kernel_short_of_resources_is_retried_then_given_up() {
        let faults = Faults {
            enters: [libc::EAGAIN, libc::EBUSY, libc::EAGAIN]
                .map(Enter::Fail)
                .into(),
            ..Faults::default()
        };
        let Some((mut writer, mut sessions, written, _)) = wrote(faults, 4) else {
            return;
        };
        assert!(writer.has_ring(), "kept after a few");
        all_delivered(&mut sessions, &frames(4), &written);

        writer.kernel.enters = (0..=MAX_RETRIES)
            .map(|_| Enter::Fail(libc::EBUSY))
            .collect();
        let mut written = Vec::new();
        writer.write(chunk(&sessions, frames(4)), &mut written);
        assert!(!writer.has_ring(), "given up");
        assert!(
            writer.kernel.enters.is_empty(),
            "after {MAX_RETRIES} retries"
        );
        all_delivered(&mut sessions, &frames(4), &written);
    }

    /// The kernel takes part of a submission: the next `io_uring_enter(2)` submits the rest,
    /// and every frame leaves once.
    #[test]
    fn a_partial_submission_is_followed_by_the_rest() {
        let faults = Faults {
            enters: [Enter::Take(2, None)].into(),
            ..Faults::default()
        };
        let Some((mut writer, mut sessions, written, _)) = wrote(faults, 6) else {
            return;
        };
        assert_eq!(writer.kernel.enters_made, 2);
        assert_eq!(writer.submissions(), 1);
        assert!(writer.has_ring());
        all_delivered(&mut sessions, &frames(6), &written);
    }

    /// Completions that are not there when the submission returns are waited for.
    #[test]
    fn completions_that_come_late_are_waited_for() {
        let faults = Faults {
            late: vec![0, 3],
            ..Faults::default()
        };
        let Some((mut writer, mut sessions, written, _)) = wrote(faults, 4) else {
            return;
        };
        assert_eq!(writer.kernel.enters_made, 2, "once more for the late ones");
        assert!(writer.has_ring());
        all_delivered(&mut sessions, &frames(4), &written);
    }

    /// A ring that sets up but has no SEND (its probe says so) is never used: one send(2)
    /// per frame from the start, said once.
    #[test]
    fn a_ring_without_send_is_not_used() {
        if with_ring().is_none() {
            return;
        }
        let mut writer = Writer::with_kernel(
            Faults {
                no_send: true,
                ..Faults::default()
            },
            ENTRIES,
        );
        let mut sessions = sessions(4);
        let mut written = Vec::new();
        let (has, lines) = logged(|| {
            let has = writer.has_ring();
            writer.write(chunk(&sessions, frames(4)), &mut written);
            has
        });
        assert!(!has);
        assert_eq!(writer.submissions(), 0);
        assert_eq!(writer.kernel.requests, 0);
        all_delivered(&mut sessions, &frames(4), &written);
        assert_eq!(lines.len(), 1, "said once: {lines:?}");
        assert!(
            lines[0].contains("INFO") && lines[0].contains("no SEND"),
            "{lines:?}"
        );
    }

    /// A SEND the ring answers `EINVAL` or `EOPNOTSUPP` (an emulated or restricted io_uring
    /// whose probe said yes) goes by send(2), and the ring retires: no session fails.
    #[test]
    fn a_send_the_ring_refuses_goes_by_send2() {
        let faults = Faults {
            refuse: vec![(1, libc::EINVAL), (2, libc::EOPNOTSUPP)],
            ..Faults::default()
        };
        let Some((mut writer, mut sessions, written, lines)) = wrote(faults, 5) else {
            return;
        };
        assert!(writer.kernel.refused.is_empty(), "both were NOPs");
        assert!(!writer.has_ring(), "retired");
        all_delivered(&mut sessions, &frames(5), &written);
        assert_eq!(lines.len(), 1, "said once: {lines:?}");
        assert!(lines[0].contains("SEND answered"), "{lines:?}");

        let mut written = Vec::new();
        writer.write(chunk(&sessions, frames(5)), &mut written);
        assert_eq!(writer.submissions(), 1, "one send(2) per frame since");
        all_delivered(&mut sessions, &frames(5), &written);
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

    /// Over the tokio adapter's own sockets, real TCP: a chunk leaves in one submission;
    /// a frame larger than the socket takes waits for the task, which finishes it as the
    /// peer reads; a socket shut down for writing fails its session.
    #[test]
    fn a_chunk_leaves_over_tcp() {
        let Some(mut writer) = with_ring() else {
            return;
        };
        let rt = runtime();
        let mut sessions = tcp_sessions(&rt, 6);
        socket2::SockRef::from(&sessions[5].0.socket)
            .shutdown(std::net::Shutdown::Write)
            .unwrap();
        let big: Vec<u8> = (0..16 << 20).map(|i| b'a' + (i % 26) as u8).collect();
        let mut framed = frames(6);
        framed[0] = frame(&big);
        let mut written = Vec::new();
        writer.write(chunk(&sessions, framed.clone()), &mut written);
        assert_eq!(writer.submissions(), 1);
        let mut reported = [0; 6];
        for &(s, n) in &written {
            reported[s] += n;
        }
        assert_eq!(
            reported[1..5],
            framed[1..5].iter().map(Bytes::len).collect::<Vec<_>>()
        );
        for (i, (_, peer)) in sessions.iter_mut().enumerate().skip(1).take(4) {
            let mut got = vec![0; framed[i].len()];
            peer.read_exact(&mut got).unwrap();
            assert_eq!(got, &framed[i][..]);
        }
        assert!(failed(&sessions[5].0), "EPIPE fails it");

        // The big frame: what the socket did not take, the task writes as the peer reads.
        let mut peer = sessions[0].1.try_clone().unwrap();
        let len = framed[0].len();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0; len];
            peer.read_exact(&mut got).map(|()| got)
        });
        let direct = &sessions[0].0;
        rt.block_on(core::future::poll_fn(|cx| loop {
            match direct.poll_drain(cx) {
                Poll::Ready(Ok(n)) => {
                    reported[0] += n;
                    if !direct.is_stuck() {
                        return Poll::Ready(());
                    }
                }
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => return Poll::Pending,
            }
        }));
        assert_eq!(reported[0], len, "reported once wholly written");
        assert!(
            reader.join().unwrap().unwrap() == framed[0],
            "whole, in order"
        );
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

//! The fan-out write path: server frames written straight to a session's socket
//! by whoever produced them, framed once per broadcast.
//!
//! A frame routed to many sessions is the same WebSocket frame for all of them (server frames
//! are not masked), so [`Framer`] builds header and payload once into one shared buffer and
//! every recipient writes those bytes. The hub writes them at once, from its drain, to a
//! socket that takes them ([`Direct::send`]): no channel hop and no task wake-up per delivery,
//! only the write syscall. What a socket does not take waits in the session's [`Direct`]
//! queue, in order, and its task writes the whole queue with one vectored write once the
//! socket is writable again (one wake per batch, not per frame). The queue is a `VecDeque`
//! that allocates only when something waits, and it is bounded by the state machine's
//! outbound budget: queued bytes are reported written
//! ([`Server::handle_sent`](syncmux::Server::handle_sent)) only once they left, so a consumer
//! that stops reading is closed with 4503 as before.
//!
//! tungstenite still runs the handshake and reads the session's frames; whatever it writes
//! itself (pong and close answers) goes through the same queue ([`Direct::write`]), so frames
//! never interleave. Written by hand because no WebSocket crate exposes this: tungstenite
//! frames and buffers every message per connection, behind `&mut self`.
//!
//! The hub hands each chunk of its drain's frames to a [`Writer`]: on Linux with the tokio
//! adapter, one io_uring submission for the whole chunk (`uring`), each frame
//! holding its session's lock ([`DirectOutlet::claim`]) until its outcome is known;
//! elsewhere, or where no ring can be made, one [`DirectOutlet::send`] per frame.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use core::task::{Context, Poll};
use futures_util::task::AtomicWaker;

use crate::frames::Events;
use crate::hub::Out;

/// A session's slot index in the hub's outlets: what the writers report written frames by.
pub(crate) type Slot = usize;

#[cfg(all(feature = "tokio", target_os = "linux"))]
pub(crate) use crate::uring::Writer;

/// A WebSocket ping with no payload, as the hub writes it to a direct socket.
pub(crate) const PING: Bytes = Bytes::from_static(&[0x89, 0x00]);

/// What a direct socket's frames are written as.
pub(crate) enum Framing {
    /// WebSocket frames, each payload framed once per drain ([`Framer`]).
    WebSocket,
    /// A stream's events, as its [`Events`] makes them; the inbox takes what an event
    /// answers (a ping's pong, say).
    Events(Arc<dyn Events>, async_channel::Sender<Bytes>),
}

/// At most this many frames per vectored write (Linux takes 1024; the kernel's socket
/// buffer is full long before).
const MAX_SLICES: usize = 64;

/// What tungstenite may queue beyond the frames (its pong and close answers) before its
/// writes wait: a peer that pings without reading holds at most this much.
const MAX_OWN_QUEUED: usize = 64 * 1024;

/// A non-blocking socket written through a shared reference (a tokio `TcpStream`).
pub(crate) trait RawSocket: Send + Sync + 'static {
    /// Writes what the socket takes now; `WouldBlock` when it takes nothing.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Ready once the socket may take bytes again (registers `cx` otherwise).
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Writes what the socket takes of `buf` now, without consulting (or clearing) the
    /// runtime's record of its readiness: the hub's first try at a frame when nothing waits.
    /// A `WouldBlock` here is followed by [`try_write_vectored`](Self::try_write_vectored)
    /// calls (the task's), which do.
    fn send_now(&self, buf: &[u8]) -> io::Result<usize> {
        self.try_write_vectored(&[IoSlice::new(buf)])
    }
    /// The socket's descriptor, for the hub's batched sends (`uring`), which act
    /// as [`send_now`](Self::send_now) does; `None`: each frame goes through `send_now`.
    /// Borrowed from the socket, not a bare number: the batched sends hand it to the kernel,
    /// and only the borrow says it stays open (and stays this socket) while they use it.
    #[cfg(all(feature = "tokio", target_os = "linux"))]
    fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
}

/// The hub's side of a session with a direct socket.
pub(crate) trait DirectOutlet: Send + Sync {
    /// The bytes `out` is written as on this socket (`framer` frames WebSocket payloads once
    /// per drain); `None`: nothing is written for it (a stream's events answer pings
    /// themselves, and some frames are no event).
    fn framed(&self, framer: &mut Framer, out: &Out) -> Option<Bytes>;

    /// Queues one framed message (`report`: its payload length, reported written once it
    /// left) and writes what the socket takes; gives the payload bytes that left now.
    fn send(&self, framed: Bytes, report: usize) -> usize;

    /// Queues one framed message behind those waiting, without writing it:
    /// [`flush_queued`](Self::flush_queued) does, with the others, in one write.
    fn queue(&self, framed: Bytes, report: usize);

    /// Writes what waits, in one vectored write as far as the socket takes it; what it does
    /// not take is left to the session's task (woken), which writes it once the socket is
    /// writable. Gives the payload bytes that left now.
    fn flush_queued(&self) -> usize;

    /// [`send`](Self::send)'s first half, for a batch of sends: queues the frame behind
    /// waiting ones (or drops it, the socket having failed), or holds the session's lock for
    /// the batch to send it, or gives it back to be sent alone (the lock is taken, or the
    /// socket has no descriptor).
    #[cfg(all(feature = "tokio", target_os = "linux"))]
    fn claim(&self, framed: Bytes, report: usize) -> Claim<'_>;
}

/// What [`DirectOutlet::claim`] made of a frame.
#[cfg(all(feature = "tokio", target_os = "linux"))]
pub(crate) enum Claim<'a> {
    /// Queued behind waiting frames, or dropped as the socket failed: nothing left now.
    Settled,
    /// Nothing waits: the frame goes out with the batch, and [`Held::finish`] settles it.
    Held(Held<'a>),
    /// To send alone ([`DirectOutlet::send`]), once the batch released its locks.
    Alone(Bytes),
}

/// A frame of a batch and its session's writer, locked with nothing waiting, from before its
/// send until [`finish`](Self::finish) (or [`send_alone`](Self::send_alone),
/// [`abandon`](Self::abandon), [`fail`](Self::fail)) settles it: no other write slips in
/// between.
#[cfg(all(feature = "tokio", target_os = "linux"))]
pub(crate) struct Held<'a> {
    out: std::sync::MutexGuard<'a, Queue>,
    task: &'a AtomicWaker,
    framed: Bytes,
    report: usize,
    /// The socket, to send the frame by `send(2)` when the batch cannot.
    socket: &'a dyn RawSocket,
    fd: std::os::fd::BorrowedFd<'a>,
}

#[cfg(all(feature = "tokio", target_os = "linux"))]
impl<'a> Held<'a> {
    /// The frame to send.
    pub(crate) fn frame(&self) -> &Bytes {
        &self.framed
    }

    /// The socket to send it on, open for as long as the session's `Direct` is borrowed.
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'a> {
        self.fd
    }

    /// Settles the frame with its send's outcome, as [`DirectOutlet::send`] does: gives the
    /// payload bytes that left now (all of it or none).
    pub(crate) fn finish(self, result: io::Result<usize>) -> usize {
        let Held {
            mut out,
            task,
            framed,
            report,
            ..
        } = self;
        // Interrupted before it sent anything: the frame waits like one the socket refused.
        let result = match result {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                Err(io::ErrorKind::WouldBlock.into())
            }
            other => other,
        };
        out.settle(task, framed, report, result)
    }

    /// Sends the frame with one `send(2)` (the batch could not: its ring cannot SEND, or it
    /// never took the request) and settles it, as [`DirectOutlet::send`] does.
    pub(crate) fn send_alone(self) -> usize {
        let Held {
            mut out,
            task,
            framed,
            report,
            socket,
            ..
        } = self;
        let result = send_once(socket, &framed);
        out.settle(task, framed, report, result)
    }

    /// The frame's request may still be in the kernel (its ring failed, or the batch unwound,
    /// before its completion came): the session's socket fails, as whether (and how much of)
    /// the frame left is unknown, and the frame's buffer is never freed, as the kernel may
    /// still read it.
    pub(crate) fn abandon(self, why: &dyn core::fmt::Display) {
        let Held {
            mut out,
            task,
            framed,
            ..
        } = self;
        core::mem::forget(framed);
        out.failed = Some(format!("io_uring: {why}"));
        drop(out);
        task.wake();
    }

    /// The batch unwound with this frame unsettled (its request reaped, or never taken): the
    /// session's socket fails, as the frame may have left in part, or not at all while the
    /// state machine waits for it to; the kernel is done with its buffer.
    pub(crate) fn fail(self, why: &dyn core::fmt::Display) {
        let Held { mut out, task, .. } = self;
        out.failed = Some(format!("io_uring: {why}"));
        drop(out);
        task.wake();
    }
}

/// One `send(2)` of `buf` (again when interrupted before it sent anything).
fn send_once<S: RawSocket + ?Sized>(socket: &S, buf: &[u8]) -> io::Result<usize> {
    loop {
        match socket.send_now(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

/// One [`DirectOutlet::send`] per frame of `chunk` (session, socket, frame, payload length);
/// adds the payload bytes that left now to `written`.
pub(crate) fn send_each<'a>(
    chunk: impl IntoIterator<Item = (Slot, &'a dyn DirectOutlet, Bytes, usize)>,
    written: &mut Vec<(Slot, usize)>,
) {
    for (session, direct, framed, report) in chunk {
        let n = direct.send(framed, report);
        if n > 0 {
            written.push((session, n));
        }
    }
}

/// The hub's writer of direct frames where there is no io_uring: one `send(2)` per frame.
/// (Braced, not a unit struct, so that `Writer::default()` builds either writer.)
#[cfg(not(all(feature = "tokio", target_os = "linux")))]
#[derive(Default)]
pub(crate) struct Writer {}

#[cfg(not(all(feature = "tokio", target_os = "linux")))]
impl Writer {
    /// Writes `chunk`'s frames; see [`send_each`].
    pub(crate) fn write(
        &mut self,
        chunk: Vec<(Slot, &dyn DirectOutlet, Bytes, usize)>,
        written: &mut Vec<(Slot, usize)>,
    ) {
        send_each(chunk, written);
    }
}

/// One queued write.
struct Entry {
    bytes: Bytes,
    /// Payload bytes to report written once `bytes` is all out.
    report: usize,
    /// Written by tungstenite (its answers), counted in [`Queue::own`].
    own: bool,
}

#[derive(Default)]
struct Queue {
    queue: VecDeque<Entry>,
    /// Bytes in `queue` that tungstenite wrote (its answers), for [`MAX_OWN_QUEUED`].
    own: usize,
    /// The socket was full with `queue` left: the session's task writes it once the socket
    /// is writable. Otherwise what `queue` holds waits for the hub's
    /// [`flush_queued`](DirectOutlet::flush_queued).
    waiting: bool,
    /// Payload bytes written by a flush whose caller does not report them (tungstenite's
    /// writes), for the task to report.
    unreported: usize,
    /// The socket failed: nothing more is written, the task ends.
    failed: Option<String>,
}

impl Queue {
    /// Queues a frame of the hub's behind those waiting.
    fn push_frame(&mut self, bytes: Bytes, report: usize) {
        self.queue.push_back(Entry {
            bytes,
            report,
            own: false,
        });
    }

    /// Settles a frame that was sent on its own with the send's outcome: gives the payload
    /// bytes that left (all of it or none); what did not leave waits for the session's task
    /// (woken), or the socket fails.
    fn settle(
        &mut self,
        task: &AtomicWaker,
        mut framed: Bytes,
        report: usize,
        result: io::Result<usize>,
    ) -> usize {
        match result {
            Ok(n) if n == framed.len() => return report,
            Ok(0) => self.failed = Some("the socket took no bytes".to_owned()),
            Ok(n) => framed.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => self.failed = Some(e.to_string()),
        }
        if self.failed.is_none() {
            // The rest waits for the task, which writes it once the socket is writable.
            self.push_frame(framed, report);
            self.waiting = true;
        }
        task.wake();
        0
    }
}

/// A session's socket shared by the hub (which writes frames) and the session's task (which
/// reads, and writes what waited).
pub(crate) struct Direct<S> {
    pub(crate) socket: S,
    framing: Framing,
    out: Mutex<Queue>,
    /// The session's task: woken when something waits for writability or a close came.
    task: AtomicWaker,
}

impl<S: RawSocket> Direct<S> {
    /// A socket whose frames are WebSocket frames.
    pub(crate) fn new(socket: S) -> Direct<S> {
        Direct::with_framing(socket, Framing::WebSocket)
    }

    /// A socket whose frames are written as `framing` makes them.
    pub(crate) fn with_framing(socket: S, framing: Framing) -> Direct<S> {
        Direct {
            socket,
            framing,
            out: Mutex::default(),
            task: AtomicWaker::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes as much of the queue as the socket takes, every waiting entry in one vectored
    /// write; gives the payload bytes of the entries that left.
    fn write_queue(&self, out: &mut Queue) -> usize {
        let mut done = 0;
        while !out.queue.is_empty() && out.failed.is_none() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (slot, entry) in slices.iter_mut().zip(&out.queue) {
                *slot = IoSlice::new(&entry.bytes);
                count += 1;
            }
            match self.socket.try_write_vectored(&slices[..count]) {
                Ok(0) => out.failed = Some("the socket took no bytes".to_owned()),
                Ok(mut n) => {
                    while n > 0 {
                        let Some(front) = out.queue.front_mut() else {
                            break;
                        };
                        let len = front.bytes.len();
                        let taken = n.min(len);
                        if front.own {
                            out.own -= taken;
                        }
                        if n >= len {
                            n -= len;
                            done += front.report;
                            out.queue.pop_front();
                        } else {
                            front.bytes.advance(n);
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    out.waiting = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => out.failed = Some(e.to_string()),
            }
        }
        if out.queue.is_empty() {
            out.waiting = false;
        }
        if out.queue.capacity() > 0 && out.queue.is_empty() {
            // Nothing waits: an idle session keeps no queue.
            out.queue = VecDeque::new();
        }
        done
    }

    /// Writes what waits for the socket until the queue is empty (registering `cx` for
    /// writability otherwise); gives the payload bytes written since the last call. Frames
    /// queued for the hub's [`flush_queued`](DirectOutlet::flush_queued) are left to it.
    pub(crate) fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<Result<usize, String>> {
        let mut out = self.lock();
        if !out.waiting && out.failed.is_none() {
            return Poll::Ready(Ok(core::mem::take(&mut out.unreported)));
        }
        loop {
            let done = self.write_queue(&mut out);
            out.unreported += done;
            if let Some(why) = &out.failed {
                return Poll::Ready(Err(why.clone()));
            }
            if out.queue.is_empty() {
                return Poll::Ready(Ok(core::mem::take(&mut out.unreported)));
            }
            match self.socket.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => out.failed = Some(e.to_string()),
                Poll::Pending => {
                    return match core::mem::take(&mut out.unreported) {
                        0 => Poll::Pending,
                        n => Poll::Ready(Ok(n)),
                    }
                }
            }
        }
    }

    /// The payload bytes written (by tungstenite's writes' flushes) and not yet reported.
    pub(crate) fn take_unreported(&self) -> usize {
        core::mem::take(&mut self.lock().unreported)
    }

    /// Registers the session's task for [`DirectOutlet::send`]'s wake-ups.
    pub(crate) fn register(&self, cx: &mut Context<'_>) {
        self.task.register(cx.waker());
    }

    /// Whether frames wait for the socket.
    #[cfg(test)]
    pub(crate) fn is_stuck(&self) -> bool {
        !self.lock().queue.is_empty()
    }

    /// Queues bytes tungstenite writes (a whole frame or the rest of one) behind the frames
    /// already waiting. Waits (registering `cx`) while [`MAX_OWN_QUEUED`] of them wait.
    pub(crate) fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut out = self.lock();
        loop {
            if let Some(why) = &out.failed {
                return Poll::Ready(Err(io::Error::other(why.clone())));
            }
            if out.own < MAX_OWN_QUEUED {
                break;
            }
            let done = self.write_queue(&mut out);
            out.unreported += done;
            if out.own < MAX_OWN_QUEUED {
                break;
            }
            match self.socket.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        out.own += buf.len();
        out.queue.push_back(Entry {
            bytes: Bytes::copy_from_slice(buf),
            report: 0,
            own: true,
        });
        let done = self.write_queue(&mut out);
        out.unreported += done;
        Poll::Ready(Ok(buf.len()))
    }

    /// Ready once everything queued left (tungstenite's flush).
    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut out = self.lock();
        loop {
            let done = self.write_queue(&mut out);
            out.unreported += done;
            if let Some(why) = &out.failed {
                return Poll::Ready(Err(io::Error::other(why.clone())));
            }
            if out.queue.is_empty() {
                return Poll::Ready(Ok(()));
            }
            match self.socket.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: RawSocket> DirectOutlet for Direct<S> {
    fn framed(&self, framer: &mut Framer, out: &Out) -> Option<Bytes> {
        match (&self.framing, out) {
            (Framing::WebSocket, Out::Frame(payload)) => Some(framer.frame(payload)),
            (Framing::WebSocket, Out::Ping) => Some(PING),
            (Framing::Events(events, inbox), Out::Frame(frame)) => events.frame(frame, inbox),
            (Framing::Events(..), Out::Ping) => None,
        }
    }

    fn send(&self, framed: Bytes, report: usize) -> usize {
        let mut out = self.lock();
        if out.failed.is_some() {
            // The task saw (or will see) the failure and ends the session.
            return 0;
        }
        if !out.queue.is_empty() {
            // The task writes it with the others once the socket is writable.
            out.push_frame(framed, report);
            return 0;
        }
        // The common case, nothing waits: the frame goes straight out, without a queue
        // entry (whose buffer an idle session would allocate and free per frame).
        let result = send_once(&self.socket, &framed);
        out.settle(&self.task, framed, report, result)
    }

    fn queue(&self, framed: Bytes, report: usize) {
        let mut out = self.lock();
        if out.failed.is_none() {
            out.push_frame(framed, report);
        }
    }

    fn flush_queued(&self) -> usize {
        let mut out = self.lock();
        if out.waiting || out.failed.is_some() {
            // The task writes once the socket is writable (or ends the session).
            return 0;
        }
        let done = self.write_queue(&mut out);
        let wake = out.waiting || out.failed.is_some();
        drop(out);
        if wake {
            self.task.wake();
        }
        done
    }

    #[cfg(all(feature = "tokio", target_os = "linux"))]
    fn claim(&self, framed: Bytes, report: usize) -> Claim<'_> {
        use std::sync::TryLockError;
        let Some(fd) = self.socket.fd() else {
            return Claim::Alone(framed);
        };
        let mut out = match self.out.try_lock() {
            Ok(out) => out,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return Claim::Alone(framed),
        };
        if out.failed.is_some() {
            return Claim::Settled;
        }
        if !out.queue.is_empty() {
            out.push_frame(framed, report);
            return Claim::Settled;
        }
        Claim::Held(Held {
            out,
            task: &self.task,
            framed,
            report,
            socket: &self.socket,
            fd,
        })
    }
}

/// Payloads a [`Framer`] remembers: the OT hub's frames interleave payloads (each session
/// takes the ops held for it in turn), so the last one alone would frame most of them again.
const RECENT: usize = 8;

/// Frames the messages of one drain: a payload sent to many sessions (the same `Bytes`) is
/// framed once, and every recipient gets a clone of that one buffer.
#[derive(Default)]
pub(crate) struct Framer {
    /// The payloads framed lately and their frames; `next` is the slot written next.
    recent: [Option<(Bytes, Bytes)>; RECENT],
    next: usize,
}

impl Framer {
    /// The WebSocket frame (unmasked, final, text, or binary should the payload not be
    /// UTF-8) of `payload`, shared with an earlier call's when it was the same buffer.
    pub(crate) fn frame(&mut self, payload: &Bytes) -> Bytes {
        // Newest first: a broadcast's recipients come one after the other.
        for i in 1..=RECENT {
            let slot = &self.recent[(self.next + RECENT - i) % RECENT];
            match slot {
                Some((seen, framed))
                    if seen.as_ptr() == payload.as_ptr() && seen.len() == payload.len() =>
                {
                    return framed.clone();
                }
                Some(_) => {}
                None => break,
            }
        }
        let framed = frame(payload);
        self.recent[self.next] = Some((payload.clone(), framed.clone()));
        self.next = (self.next + 1) % RECENT;
        framed
    }
}

/// One unmasked final frame holding `payload` (RFC 6455 section 5.2): text, as the core only
/// encodes JSON; binary should that ever not be UTF-8 (the peer answers `INVALID_FRAME`
/// rather than us panicking).
pub(crate) fn frame(payload: &[u8]) -> Bytes {
    let opcode = if core::str::from_utf8(payload).is_ok() {
        0x1
    } else {
        0x2
    };
    let len = payload.len();
    let mut buf = BytesMut::with_capacity(len + 10);
    buf.put_u8(0x80 | opcode);
    if len < 126 {
        buf.put_u8(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        buf.put_u8(126);
        buf.put_u16(short);
    } else {
        buf.put_u8(127);
        buf.put_u64(len as u64);
    }
    buf.put_slice(payload);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A socket that takes everything while open (at most `room` bytes a write, if set),
    /// nothing while blocked, and counts writes.
    #[derive(Default)]
    struct Fake {
        blocked: AtomicBool,
        room: AtomicUsize,
        writes: AtomicUsize,
        taken: Mutex<Vec<u8>>,
    }

    impl RawSocket for Arc<Fake> {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.blocked.load(Ordering::SeqCst) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.writes.fetch_add(1, Ordering::SeqCst);
            let mut room = match self.room.load(Ordering::SeqCst) {
                0 => usize::MAX,
                n => n,
            };
            let mut taken = self.taken.lock().unwrap();
            let mut n = 0;
            for b in bufs {
                let part = &b[..b.len().min(room)];
                taken.extend_from_slice(part);
                n += part.len();
                room -= part.len();
            }
            Ok(n)
        }
        fn poll_write_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.blocked.load(Ordering::SeqCst) {
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        }
    }

    #[test]
    fn frames_follow_rfc_6455_lengths() {
        assert_eq!(&frame(b"{}")[..], b"\x81\x02{}");
        let mid = vec![b'a'; 300];
        let f = frame(&mid);
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
        assert_eq!(f.len(), 304);
        let big = vec![b'a'; 70_000];
        let f = frame(&big);
        assert_eq!(&f[..2], &[0x81, 127]);
        assert_eq!(&f[2..10], &70_000u64.to_be_bytes());
        assert_eq!(frame(&[0xff])[0], 0x82, "not UTF-8: binary");
    }

    /// One broadcast payload is framed once: every recipient's frame is the same buffer,
    /// whatever the number of recipients.
    #[test]
    fn a_broadcast_is_framed_once_for_every_recipient() {
        let payload = Bytes::from_static(br#"{"type":"change","payload":{}}"#);
        let mut framer = Framer::default();
        let frames: Vec<Bytes> = (0..1000).map(|_| framer.frame(&payload.clone())).collect();
        assert!(frames.iter().all(|f| f.as_ptr() == frames[0].as_ptr()));
        let other = Bytes::from(payload.to_vec());
        assert_ne!(framer.frame(&other).as_ptr(), frames[0].as_ptr());
        // Interleaved with others (the OT hub's held ops), still framed once.
        let payloads: Vec<Bytes> = (0..RECENT)
            .map(|i| Bytes::from(format!("{{\"op\":{i}}}")))
            .collect();
        let first: Vec<Bytes> = payloads.iter().map(|p| framer.frame(p)).collect();
        for (p, framed) in payloads.iter().zip(&first).rev() {
            assert_eq!(framer.frame(p).as_ptr(), framed.as_ptr());
        }
    }

    /// Frames queued while the socket is full leave in one write once it is writable, in
    /// order, and are reported then (not before).
    #[test]
    fn queued_frames_leave_in_one_write() {
        let fake = Arc::new(Fake::default());
        let direct = Direct::new(fake.clone());
        assert_eq!(direct.send(frame(b"a"), 1), 1, "written at once");
        assert_eq!(fake.writes.load(Ordering::SeqCst), 1);
        fake.blocked.store(true, Ordering::SeqCst);
        for payload in [&b"bb"[..], b"ccc", b"dddd"] {
            assert_eq!(direct.send(frame(payload), payload.len()), 0, "waits");
        }
        assert!(direct.is_stuck());
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        assert!(direct.poll_drain(&mut cx).is_pending());
        fake.blocked.store(false, Ordering::SeqCst);
        assert_eq!(direct.poll_drain(&mut cx), Poll::Ready(Ok(9)));
        assert_eq!(
            fake.writes.load(Ordering::SeqCst),
            2,
            "one write for three frames"
        );
        let taken = fake.taken.lock().unwrap().clone();
        assert_eq!(taken, b"\x81\x01a\x81\x02bb\x81\x03ccc\x81\x04dddd");
        assert!(!direct.is_stuck());
    }

    /// A frame the socket takes only part of: the rest waits, the next frame queues behind
    /// it, and its payload is reported once all of it left.
    #[test]
    fn a_partly_written_frame_is_finished_before_the_next() {
        let fake = Arc::new(Fake::default());
        let direct = Direct::new(fake.clone());
        fake.room.store(3, Ordering::SeqCst);
        assert_eq!(direct.send(frame(b"abcd"), 4), 0, "partly out");
        assert!(direct.is_stuck());
        assert_eq!(direct.send(frame(b"ef"), 2), 0, "behind the rest");
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        fake.room.store(0, Ordering::SeqCst);
        assert_eq!(direct.poll_drain(&mut cx), Poll::Ready(Ok(6)));
        assert_eq!(&fake.taken.lock().unwrap()[..], b"\x81\x04abcd\x81\x02ef");
    }

    /// tungstenite's own writes wait behind queued frames: nothing interleaves.
    #[test]
    fn own_writes_queue_behind_frames() {
        let fake = Arc::new(Fake::default());
        let direct = Direct::new(fake.clone());
        fake.blocked.store(true, Ordering::SeqCst);
        direct.send(frame(b"x"), 1);
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        assert!(matches!(
            direct.poll_write(&mut cx, b"\x8a\x00"),
            Poll::Ready(Ok(2))
        ));
        assert!(direct.poll_flush(&mut cx).is_pending());
        fake.blocked.store(false, Ordering::SeqCst);
        assert!(matches!(direct.poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(direct.take_unreported(), 1);
        assert_eq!(&fake.taken.lock().unwrap()[..], b"\x81\x01x\x8a\x00");
    }
}

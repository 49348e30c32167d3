//! The fallback when the page's WebSocket cannot open (a proxy or network that blocks it): the
//! same frames over an `EventSource` for the server's and `fetch` POSTs for the client's, as
//! `syncmux-server` serves them. Both clients use it: the sync client's link
//! (`GET /sync/sse`, `POST /sync/send`, docs/protocol.md section 2.3) and the OT client's
//! (`GET /ot/events`, `POST /ot/messages`, open-ot's wire). A driver hands it frames and gets
//! its events through [`SseInputs`]; every protocol decision stays the core's.
//!
//! A link POSTs one request at a time: frames written while a POST is under way wait for the
//! next, so the server handles them in order. The `EventSource` never reconnects by itself:
//! an error ends the link, and the driver's backoff decides when to dial again (over the
//! WebSocket first).

use std::rc::{Rc, Weak};

use js_sys::{Function, Reflect};
use wasm_bindgen::prelude::*;
use web_sys::{Event, EventSource, MessageEvent};

#[wasm_bindgen]
extern "C" {
    /// The promise of a `fetch`.
    type Fetch;

    /// The global `fetch`, so that the client also runs in a Web Worker.
    #[wasm_bindgen(js_name = fetch)]
    fn fetch(url: &str, init: &JsValue) -> Fetch;

    /// `then(resolved, rejected)`, with the bound functions below.
    #[wasm_bindgen(method)]
    fn then(this: &Fetch, resolved: &JsValue, rejected: &JsValue);

    /// A JavaScript function, to bind.
    type Callback;

    /// `f.bind(this_arg, first)`: `f` called with `first` before its own arguments.
    #[wasm_bindgen(method)]
    fn bind(this: &Callback, this_arg: &JsValue, first: &JsValue) -> JsValue;
}

/// What the driver does with a link's events. Each comes with the link's stream (an event's
/// [`target`]), to tell the current link from an earlier one ([`SseLink::is`]).
pub(super) trait SseInputs: 'static {
    /// The stream named its session (an `event: session`): see [`SseLink::opened`].
    fn on_sse_open(self: &Rc<Self>, event: &MessageEvent);
    /// A frame (an unnamed `data:` event).
    fn on_sse_message(self: &Rc<Self>, event: &MessageEvent);
    /// The stream ended: `event` is the server's `event: close` (a `MessageEvent`, read by
    /// [`close_of`]), or the `EventSource`'s `error` (the link failed).
    fn on_sse_end(self: &Rc<Self>, event: &Event);
    /// A POST of the link with stream `target` was answered with `status` (`None`: the
    /// request failed); [`SseLink::taken`] says whether its frames reached the session.
    fn on_posted(self: &Rc<Self>, target: &JsValue, status: Option<u16>);
}

/// The stream an event of it came from.
pub(super) fn target(event: &Event) -> JsValue {
    event.target().map_or(JsValue::NULL, JsValue::from)
}

/// The code and reason of the server's `event: close` (`{"code":N,"reason":"..."}`); 1006
/// when it does not say.
#[cfg(feature = "sync")]
pub(super) fn close_of(event: &MessageEvent) -> (u16, String) {
    let close = event.data().as_string().and_then(|data| {
        let data = js_sys::JSON::parse(&data).ok()?;
        let code = Reflect::get(&data, &"code".into()).ok()?.as_f64()?;
        let reason = Reflect::get(&data, &"reason".into()).ok()?.as_string();
        Some((code as u16, reason.unwrap_or_default()))
    });
    close.unwrap_or((1006, String::new()))
}

/// How a link's POSTs go, as each server endpoint takes them. Either way the stream names its
/// session in an `event: session` (the own protocol's first event; the OT profile's right
/// after `init`), which POSTs carry as `?session=`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Tie {
    /// syncmux's own (the sync client): the frames written meanwhile, one per line.
    #[cfg(feature = "sync")]
    Session,
    /// open-ot's (the OT client): one frame per POST. The stream's cookie names it too, so
    /// both requests go with credentials (for a server on another origin).
    #[cfg(feature = "ot")]
    Cookie,
}

impl Tie {
    /// The options of the link's `EventSource` and of its `fetch`es, as JSON (parsed by the
    /// browser, which is smaller than setting each field from Rust): with the browser's
    /// cookies for the server when the tie is one.
    fn options(self) -> (&'static str, &'static str) {
        match self {
            #[cfg(feature = "sync")]
            Tie::Session => ("{}", r#"{"method":"POST"}"#),
            #[cfg(feature = "ot")]
            Tie::Cookie => (
                r#"{"withCredentials":true}"#,
                r#"{"method":"POST","credentials":"include"}"#,
            ),
        }
    }
}

/// The callbacks of a driver's links, made once per client; weak, as the socket's.
pub(super) struct SseCallbacks {
    session: Closure<dyn FnMut(MessageEvent)>,
    message: Closure<dyn FnMut(MessageEvent)>,
    /// The stream's `close` and `error` events.
    end: Closure<dyn FnMut(Event)>,
    /// A POST's answer: called with its link's stream (bound per POST) and the `Response`,
    /// or the error when the request failed.
    settled: Closure<dyn FnMut(JsValue, JsValue)>,
}

impl SseCallbacks {
    pub(super) fn new<D: SseInputs>(driver: &Weak<D>) -> SseCallbacks {
        let d = driver.clone();
        let session = Closure::new(move |event: MessageEvent| {
            if let Some(driver) = d.upgrade() {
                driver.on_sse_open(&event);
            }
        });
        let d = driver.clone();
        let message = Closure::new(move |event: MessageEvent| {
            if let Some(driver) = d.upgrade() {
                driver.on_sse_message(&event);
            }
        });
        let d = driver.clone();
        let end = Closure::new(move |event: Event| {
            if let Some(driver) = d.upgrade() {
                driver.on_sse_end(&event);
            }
        });
        let d = driver.clone();
        let settled = Closure::new(move |target: JsValue, answer: JsValue| {
            if let Some(driver) = d.upgrade() {
                // An error has no status.
                let status = Reflect::get(&answer, &"status".into()).ok();
                driver.on_posted(&target, status.and_then(|s| s.as_f64()).map(|s| s as u16));
            }
        });
        SseCallbacks {
            session,
            message,
            end,
            settled,
        }
    }
}

/// One link: its stream, where its POSTs go once it is open, and the frames waiting for one.
pub(super) struct SseLink {
    source: EventSource,
    tie: Tie,
    /// The POSTs' URL; [`Tie::Session`] adds the session's query once the stream named it.
    send: String,
    /// Whether the stream opened (named its session, or sent its first event).
    open: bool,
    queued: Vec<String>,
    posting: bool,
}

impl SseLink {
    /// Opens the stream at `stream`, whose frames are POSTed to `send`.
    pub(super) fn open(
        stream: &str,
        send: String,
        tie: Tie,
        callbacks: &SseCallbacks,
    ) -> Result<SseLink, JsValue> {
        let init = js_sys::JSON::parse(tie.options().0)?;
        let source = EventSource::new_with_event_source_init_dict(stream, init.unchecked_ref())?;
        let on = |name: &str, f: &Function| source.add_event_listener_with_callback(name, f);
        on("session", callbacks.session.as_ref().unchecked_ref())?;
        on("close", callbacks.end.as_ref().unchecked_ref())?;
        source.set_onmessage(Some(callbacks.message.as_ref().unchecked_ref()));
        source.set_onerror(Some(callbacks.end.as_ref().unchecked_ref()));
        Ok(SseLink {
            source,
            tie,
            send,
            open: false,
            queued: Vec::new(),
            posting: false,
        })
    }

    /// The session the stream named, from `event`'s data: the link's POSTs name it from now
    /// on. Whether the link is open now.
    pub(super) fn opened(&mut self, event: &MessageEvent) -> bool {
        let session = event.data().as_string().and_then(|data| {
            let data = js_sys::JSON::parse(&data).ok()?;
            Reflect::get(&data, &"session".into()).ok()?.as_string()
        });
        if let Some(session) = session.filter(|_| !self.open) {
            let join = if self.send.contains('?') { '&' } else { '?' };
            self.send = format!("{}{join}session={session}", self.send);
            self.open = true;
        }
        self.open
    }

    /// Whether the stream named its session (before it, an OT stream sent `init` only).
    #[cfg(feature = "ot")]
    pub(super) fn is_open(&self) -> bool {
        self.open
    }

    /// Whether a POST answered with `status` handed its frames to the session: `202`; for
    /// the OT profile also `400` and `429`, a frame the session refused (its op, or the rate
    /// limit), whose error frame comes on the stream as on a WebSocket. Other answers never
    /// reached the session (no such stream, a body over the frame limit, a failed request).
    pub(super) fn taken(&self, status: Option<u16>) -> bool {
        match self.tie {
            #[cfg(feature = "sync")]
            Tie::Session => status == Some(202),
            #[cfg(feature = "ot")]
            Tie::Cookie => matches!(status, Some(202 | 400 | 429)),
        }
    }

    /// Whether `target` is this link's stream.
    pub(super) fn is(&self, target: &JsValue) -> bool {
        AsRef::<JsValue>::as_ref(&self.source) == target
    }

    /// Sends `frame` (in a later POST when one is under way, or before the link opened).
    pub(super) fn send(&mut self, frame: &str, callbacks: &SseCallbacks) {
        self.queued.push(frame.to_owned());
        self.post(callbacks);
    }

    /// This link's POST was taken: the next one goes, with what waited meanwhile.
    pub(super) fn posted(&mut self, callbacks: &SseCallbacks) {
        self.posting = false;
        self.post(callbacks);
    }

    fn post(&mut self, callbacks: &SseCallbacks) {
        if self.posting || !self.open || self.queued.is_empty() {
            return;
        }
        let body = match self.tie {
            #[cfg(feature = "sync")]
            Tie::Session => {
                let body = self.queued.join("\n");
                self.queued.clear();
                body
            }
            #[cfg(feature = "ot")]
            Tie::Cookie => self.queued.remove(0),
        };
        // The body as plain text: a request a browser sends cross-origin without a preflight.
        let init = js_sys::JSON::parse(self.tie.options().1).unwrap_or_default();
        let _ = Reflect::set(&init, &"body".into(), &body.into());
        self.posting = true;
        // The answer's callbacks get this link's stream first, so that an earlier link's
        // late answer is told from this one's.
        let settled = callbacks.settled.as_ref().unchecked_ref::<Callback>();
        let settled = settled.bind(&JsValue::NULL, &self.source);
        fetch(&self.send, &init).then(&settled, &settled);
    }

    /// Ends the link: its stream stops reaching the driver.
    pub(super) fn close(&self) {
        self.source.set_onmessage(None);
        self.source.set_onerror(None);
        self.source.close();
    }
}

//! The browser's OT client: a JavaScript `OtClient` class over the browser's `WebSocket` and,
//! when it cannot open, open-ot's HTTP transport (an `EventSource` and `fetch` POSTs,
//! docs/protocol.md section 2.4, `crate::sse`), driving an
//! [`OtClient`](syncmux::ot::OtClient) (README, "The OT profile").
//!
//! ```js
//! import init, { OtClient } from "syncmux-ot";   // the package of feature `ot`
//! await init();
//! const doc = new OtClient("wss://ot.example/ot", { clientId: "tab-1", token: "T" });
//! doc.on("change", (op) => editor.apply(op));    // others' edits, as open-ot text ops
//! doc.edit([{ r: 5 }, { i: " world" }]);          // throws if it does not fit the text
//! console.log(doc.text, doc.revision, doc.state, doc.transport);
//! ```
//!
//! As for `SyncClient`, the adapter only moves bytes and ticks; the state machine fetches a
//! snapshot on every (re)connect and re-sends its pending edit rebased. It has no dial output,
//! so the adapter redials a lost connection after `reconnectDelay` ms, doubled per attempt up
//! to `maxReconnectDelay`. Listeners run with no borrow held and may call back in.
//!
//! The fallback follows `SyncClient`'s rules: a WebSocket that closes before it opened (a proxy
//! that refuses the upgrade, say) is replaced at once by `GET /ot/events` (the stream) and
//! `POST /ot/messages` (one frame each), tied by the id the stream names in its `event:
//! session` (not by its cookie alone, which is one per browser, for every tab); every redial
//! tries the WebSocket first again. The stream's first event, `init`, is not a frame for the
//! state machine, which fetches the document itself, as over the WebSocket, with a `snapshot`
//! request that also asks what became of its op in flight, which `init` cannot tell.

use core::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use js_sys::{Function, Reflect};
use wasm_bindgen::prelude::*;
use web_sys::{CloseEvent, Event, MessageEvent, WebSocket};

use crate::callbacks::{detach, Callbacks, Inputs};
use crate::host::{self, Timer};
use crate::sse::{self, SseCallbacks, SseInputs, SseLink, Tie};
use syncmux::ot::{OtClient, OtClientConfig, OtClientEvent, OtClientState, TextOp};
use syncmux::Instant;

/// The JavaScript OT client (`new OtClient(url, options)`).
#[wasm_bindgen(js_name = OtClient)]
pub struct BrowserOtClient {
    driver: Rc<Driver>,
}

struct Driver {
    state: RefCell<State>,
    callbacks: Callbacks,
    sse: SseCallbacks,
}

struct State {
    client: OtClient,
    /// The WebSocket's URL, the token in its query.
    url: String,
    socket: Option<WebSocket>,
    /// The fallback's link, when the WebSocket could not open.
    link: Option<SseLink>,
    /// Whether the connection (the socket, or the link) opened.
    open: bool,
    timer: Option<Timer>,
    /// When to redial, while disconnected.
    redial: Option<Instant>,
    delay: u64,
    base_delay: u64,
    max_delay: u64,
    closed: bool,
    listeners: Vec<(String, Function)>,
}

fn number(options: &JsValue, key: &str) -> Option<f64> {
    Reflect::get(options, &key.into())
        .ok()
        .and_then(|v| v.as_f64())
}

fn string(options: &JsValue, key: &str) -> Option<String> {
    Reflect::get(options, &key.into())
        .ok()
        .and_then(|v| v.as_string())
}

#[wasm_bindgen(js_class = OtClient)]
impl BrowserOtClient {
    /// A client of the OT endpoint at `url` (`ws://HOST/ot` or `wss://`), connecting at
    /// once, over `url`'s HTTP transport when the WebSocket cannot open. Options: `clientId`
    /// (default random), `docId` (default `doc-1`), `token` (sent as `?token=`),
    /// `reconnectDelay` (ms, default 500), `maxReconnectDelay` (ms, default 10000). Throws a
    /// `TypeError` on bad options.
    #[wasm_bindgen(constructor)]
    pub fn new(url: String, options: JsValue) -> Result<BrowserOtClient, JsValue> {
        let id = string(&options, "clientId")
            .unwrap_or_else(|| format!("browser-{:016x}", host::random_u64()));
        let mut config = OtClientConfig::new(id);
        if let Some(doc) = string(&options, "docId") {
            config = config.with_doc_id(doc);
        }
        let client = OtClient::new(config).map_err(|e| js_sys::TypeError::new(&e.to_string()))?;
        let mut url = url;
        if let Some(token) = string(&options, "token") {
            add_query(&mut url, "token", &token);
        }
        let base_delay = number(&options, "reconnectDelay").map_or(500, |n| n.max(1.0) as u64);
        let max_delay = number(&options, "maxReconnectDelay").map_or(10_000, |n| n.max(1.0) as u64);
        let driver = Rc::new_cyclic(|weak| Driver {
            state: RefCell::new(State {
                client,
                url,
                socket: None,
                link: None,
                open: false,
                timer: None,
                redial: None,
                delay: base_delay,
                base_delay,
                max_delay: max_delay.max(base_delay),
                closed: false,
                listeners: Vec::new(),
            }),
            callbacks: Callbacks::new(weak),
            sse: SseCallbacks::new(weak),
        });
        driver.dial();
        driver.pump();
        Ok(BrowserOtClient { driver })
    }

    /// Applies a local edit (an open-ot text op, e.g. `[{r: 2}, {i: "x"}, {d: 1}]`) and sends
    /// it when the protocol allows. Throws if it is not an op or does not fit the text.
    pub fn edit(&self, op: JsValue) -> Result<(), JsValue> {
        let json = js_sys::JSON::stringify(&op)
            .map(String::from)
            .map_err(|_| js_sys::TypeError::new("the op is not JSON"))?;
        let op =
            TextOp::from_json_str(&json).map_err(|e| js_sys::TypeError::new(&e.to_string()))?;
        let result = {
            let mut state = self.driver.state.borrow_mut();
            state.client.edit(host::now(), op)
        };
        self.driver.pump();
        result.map_err(|e| js_sys::Error::new(&e.to_string()).into())
    }

    /// The text, local edits included.
    #[wasm_bindgen(getter)]
    pub fn text(&self) -> String {
        self.driver.state.borrow().client.text().to_owned()
    }

    /// The server revision the text is based on.
    #[wasm_bindgen(getter)]
    pub fn revision(&self) -> f64 {
        self.driver.state.borrow().client.revision() as f64
    }

    /// `disconnected`, `fetching`, `synchronized`, `awaiting_ack` or `awaiting_with_buffer`.
    #[wasm_bindgen(getter)]
    pub fn state(&self) -> String {
        match self.driver.state.borrow().client.state() {
            OtClientState::Disconnected => "disconnected",
            OtClientState::Fetching => "fetching",
            OtClientState::Synchronized => "synchronized",
            OtClientState::AwaitingAck => "awaiting_ack",
            OtClientState::AwaitingWithBuffer => "awaiting_with_buffer",
        }
        .to_owned()
    }

    /// The transport of the open connection: `"websocket"`, `"sse"` (the fallback), or
    /// `null` while not connected.
    #[wasm_bindgen(getter)]
    pub fn transport(&self) -> Option<String> {
        let state = self.driver.state.borrow();
        let name = if state.socket.is_some() {
            "websocket"
        } else {
            "sse"
        };
        state.open.then(|| name.to_owned())
    }

    /// Whether local edits wait for their ack.
    #[wasm_bindgen(getter)]
    pub fn pending(&self) -> bool {
        self.driver.state.borrow().client.has_unacked()
    }

    /// Adds a listener: `change` (op), `ack` (revision), `resync` (revision), `error`
    /// (message), `connected`, `disconnected`.
    pub fn on(&self, event: String, handler: Function) {
        self.driver
            .state
            .borrow_mut()
            .listeners
            .push((event, handler));
    }

    /// Closes the connection for good.
    pub fn close(&self) {
        let mut state = self.driver.state.borrow_mut();
        state.closed = true;
        state.open = false;
        state.redial = None;
        if let Some(t) = state.timer.take() {
            t.cancel();
        }
        if let Some(socket) = state.socket.take() {
            detach(&socket);
            let _ = socket.close();
        }
        // The server reads the stream's end as the session's.
        if let Some(link) = state.link.take() {
            link.close();
        }
    }
}

impl Drop for BrowserOtClient {
    fn drop(&mut self) {
        self.close();
    }
}

impl Driver {
    /// Dials the WebSocket (every dial tries it first).
    fn dial(&self) {
        let mut state = self.state.borrow_mut();
        if state.closed || state.socket.is_some() || state.link.is_some() {
            return;
        }
        state.redial = None;
        match WebSocket::new(&state.url) {
            Ok(socket) => {
                self.callbacks.attach(&socket);
                state.socket = Some(socket);
            }
            Err(_) => state.schedule_redial(host::now()),
        }
    }

    /// The WebSocket closed before it opened: the same dial over the HTTP transport.
    fn fall_back(&self, state: &mut State) {
        let (stream, send) = fallback_urls(&state.url, state.client.config().doc_id.as_deref());
        match SseLink::open(&stream, send, Tie::Cookie, &self.sse) {
            Ok(link) => state.link = Some(link),
            Err(_) => state.schedule_redial(host::now()),
        }
    }

    /// The connection (the socket, or the link) opened.
    fn connected(&self) {
        {
            let mut state = self.state.borrow_mut();
            state.open = true;
            state.delay = state.base_delay;
            state.client.handle_connected(host::now());
        }
        self.emit("connected", &JsValue::UNDEFINED);
        self.pump();
    }

    /// A frame arrived on the connection.
    fn message(&self, text: String) {
        let mut state = self.state.borrow_mut();
        state.client.handle_message(host::now(), Bytes::from(text));
        drop(state);
        self.pump();
    }

    /// The connection (the socket, or the link) is gone: redial after the delay.
    fn lost(&self) {
        let was_open = {
            let mut state = self.state.borrow_mut();
            if let Some(socket) = state.socket.take() {
                detach(&socket);
            }
            if let Some(link) = state.link.take() {
                link.close();
            }
            let was_open = core::mem::replace(&mut state.open, false);
            let now = host::now();
            state.client.handle_disconnected(now);
            if !state.closed {
                state.schedule_redial(now);
            }
            was_open
        };
        if was_open {
            self.emit("disconnected", &JsValue::UNDEFINED);
        }
        self.pump();
    }

    /// After every input: send the frames, re-arm the timer, hand out the events.
    fn pump(&self) {
        let mut events = Vec::new();
        {
            let mut state = self.state.borrow_mut();
            let state = &mut *state;
            while let Some(frame) = state.client.poll_transmit() {
                let text = String::from_utf8_lossy(&frame);
                if let (Some(socket), true) = (&state.socket, state.open) {
                    // A failed send shows up as a close event.
                    let _ = socket.send_with_str(&text);
                } else if let Some(link) = &mut state.link {
                    // A failed POST ends the link (`on_posted`).
                    link.send(&text, &self.sse);
                }
            }
            while let Some(event) = state.client.poll_event() {
                events.push(event);
            }
            let next = match (state.client.poll_timeout(), state.redial) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if state.timer.as_ref().map(|t| t.deadline) != next {
                if let Some(t) = state.timer.take() {
                    t.cancel();
                }
                if let Some(at) = next {
                    state.timer = Some(Timer::arm(self.callbacks.timer(), at, host::now()));
                }
            }
        }
        for event in events {
            match event {
                OtClientEvent::Changed { op } => {
                    let json = js_sys::JSON::parse(&op.to_json()).unwrap_or(JsValue::NULL);
                    self.emit("change", &json);
                }
                OtClientEvent::Acked { revision } => self.emit("ack", &(revision as f64).into()),
                OtClientEvent::Resynced { revision, .. } => {
                    self.emit("resync", &(revision as f64).into());
                }
                OtClientEvent::ServerError { message } => self.emit("error", &message.into()),
                _ => {}
            }
        }
    }

    fn emit(&self, name: &str, value: &JsValue) {
        let handlers: Vec<Function> = self
            .state
            .borrow()
            .listeners
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect();
        for handler in handlers {
            // A throwing listener is the application's bug; the client goes on.
            let _ = handler.call1(&JsValue::UNDEFINED, value);
        }
    }
}

impl Inputs for Driver {
    fn on_open(self: &Rc<Self>, _: &Event) {
        self.connected();
    }

    fn on_message(self: &Rc<Self>, event: &MessageEvent) {
        if let Some(text) = event.data().as_string() {
            self.message(text);
        }
    }

    fn on_close(self: &Rc<Self>, _: &CloseEvent) {
        {
            let mut state = self.state.borrow_mut();
            if !state.open && !state.closed {
                // It never opened (blocked, say): the same dial over the HTTP transport.
                if let Some(socket) = state.socket.take() {
                    detach(&socket);
                }
                self.fall_back(&mut state);
                drop(state);
                self.pump();
                return;
            }
        }
        self.lost();
    }

    fn on_timer(self: &Rc<Self>) {
        let redial = {
            let mut state = self.state.borrow_mut();
            state.timer = None;
            let now = host::now();
            state.client.handle_timeout(now);
            state.redial.is_some_and(|at| at <= now)
        };
        if redial {
            self.dial();
        }
        self.pump();
    }
}

impl SseInputs for Driver {
    /// The stream named its session (right after `init`): the connection is open.
    fn on_sse_open(self: &Rc<Self>, event: &MessageEvent) {
        let target = sse::target(event);
        let opened = {
            let mut state = self.state.borrow_mut();
            let Some(link) = state.link.as_mut().filter(|link| link.is(&target)) else {
                return; // an earlier link's
            };
            link.opened(event)
        };
        if opened {
            self.connected();
        }
    }

    fn on_sse_message(self: &Rc<Self>, event: &MessageEvent) {
        let target = sse::target(event);
        let open = {
            let state = self.state.borrow();
            let Some(link) = state.link.as_ref().filter(|link| link.is(&target)) else {
                return; // an earlier link's
            };
            link.is_open()
        };
        // Before the stream is open it sent `init` only (the module docs): the state machine
        // fetches the document itself.
        if let Some(text) = event.data().as_string().filter(|_| open) {
            self.message(text);
        }
    }

    /// The state machine needs no close code: it fetches the document on the next connection.
    fn on_sse_end(self: &Rc<Self>, event: &Event) {
        if self.is_link(&sse::target(event)) {
            self.lost();
        }
    }

    fn on_posted(self: &Rc<Self>, target: &JsValue, status: Option<u16>) {
        let taken = {
            let mut state = self.state.borrow_mut();
            let Some(link) = state.link.as_mut().filter(|link| link.is(target)) else {
                return; // an earlier link's
            };
            let taken = link.taken(status);
            if taken {
                link.posted(&self.sse);
            }
            taken
        };
        if !taken {
            // It never reached the session (no stream of its own, a body over the frame
            // limit, a failed request), and the state machine waits for an answer to every
            // frame: the link goes, and the next connection fetches the document, as after
            // any loss.
            self.lost();
        }
    }
}

impl Driver {
    /// Whether `target` is the current link's stream.
    fn is_link(&self, target: &JsValue) -> bool {
        let state = self.state.borrow();
        state.link.as_ref().is_some_and(|link| link.is(target))
    }
}

impl State {
    fn schedule_redial(&mut self, now: Instant) {
        self.redial = Some(now + core::time::Duration::from_millis(self.delay));
        self.delay = (self.delay * 2).min(self.max_delay);
    }
}

/// Adds `key=value` to `url`'s query, the value URI-encoded.
fn add_query(url: &mut String, key: &str, value: &str) {
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str(key);
    url.push('=');
    url.push_str(&String::from(js_sys::encode_uri_component(value)));
}

/// The HTTP transport's URLs for the OT endpoint's WebSocket URL `url` (docs/protocol.md 2.4): `ws`/`wss`
/// as `http`/`https`, the path followed by `/events` (the stream, `docId` added to its query)
/// and `/messages` (the POSTs), each keeping the query (the token).
fn fallback_urls(url: &str, doc: Option<&str>) -> (String, String) {
    let http = match url.strip_prefix("ws") {
        Some(rest) => format!("http{rest}"),
        None => url.to_owned(),
    };
    let (path, query) = http.split_once('?').unwrap_or((&http, ""));
    let at = |end: &str| match query {
        "" => format!("{path}/{end}"),
        query => format!("{path}/{end}?{query}"),
    };
    let mut stream = at("events");
    if let Some(doc) = doc {
        add_query(&mut stream, "docId", doc);
    }
    (stream, at("messages"))
}

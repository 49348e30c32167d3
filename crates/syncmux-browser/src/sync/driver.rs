//! The pump: binds one [`Client`] to a browser `WebSocket` and one `setTimeout`.
//!
//! Every input (a socket event, the timer, a command from JavaScript) is followed by
//! [`BrowserDriver::pump`], which keeps the core's contract (`client` module docs): drain
//! `poll_transmit` (acting on each), re-arm the one timer at `poll_timeout`, then drain
//! `poll_event` into promises and listeners. Nothing else happens here: every protocol decision
//! is the core's.
//!
//! Listeners are JavaScript and may call back into the client (a `connected` handler that
//! pulls, say). So no borrow of the state is held while JavaScript runs, and events are handed
//! out by one outer loop: a command issued from inside a listener drives its transmits at once,
//! but its events wait their turn, so listeners see events in the order the core emitted them.

use core::cell::{Cell, RefCell};
use std::rc::Rc;

use bytes::Bytes;
use js_sys::{Array, Function, Promise};
use wasm_bindgen::prelude::*;
use web_sys::{CloseEvent, Event, MessageEvent, WebSocket};

use super::convert;
use crate::callbacks::{detach, Callbacks, Inputs};
use crate::host::{self, Timer};
use crate::sse::{self, SseCallbacks, SseInputs, SseLink, Tie};
use syncmux::wire::CloseCode;
use syncmux::ClientTransmit;
use syncmux::Instant;
use syncmux::{Client, ClientEvent, ClientState, DialRequest, RequestError, RequestId};

/// The events JavaScript can listen to, by their names in `on(name, handler)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum EventKind {
    Connected,
    Disconnected,
    Reconnecting,
    Closed,
    Error,
    Change,
    Presence,
    Room,
    Resync,
}

impl EventKind {
    pub(super) fn from_name(name: &str) -> Option<EventKind> {
        Some(match name {
            "connected" => EventKind::Connected,
            "disconnected" => EventKind::Disconnected,
            "reconnecting" => EventKind::Reconnecting,
            "closed" => EventKind::Closed,
            "error" => EventKind::Error,
            "change" => EventKind::Change,
            "presence" => EventKind::Presence,
            "room" => EventKind::Room,
            "resync" => EventKind::Resync,
            _ => return None,
        })
    }
}

/// The two functions that settle one promise.
struct Settle {
    resolve: Function,
    reject: Function,
}

impl Settle {
    fn resolve(self, value: &JsValue) {
        // Settling a promise never throws.
        let _ = self.resolve.call1(&JsValue::UNDEFINED, value);
    }

    fn reject(self, error: &JsValue) {
        let _ = self.reject.call1(&JsValue::UNDEFINED, error);
    }
}

/// A promise and the functions that settle it.
fn promise() -> (Promise, Settle) {
    let mut settle = None;
    let promise = Promise::new(&mut |resolve, reject| settle = Some(Settle { resolve, reject }));
    (
        promise,
        settle.expect("invariant: the Promise executor runs synchronously"),
    )
}

/// What the driver holds between inputs.
struct State {
    client: Client,
    /// Subprotocols offered after `syncmux.v1` (the `protocols` option).
    extra_protocols: Vec<String>,
    socket: Option<WebSocket>,
    /// The dial of a WebSocket that has not opened yet, kept to fall back with
    /// ([`Transports::sse`]).
    fallback: Option<DialRequest>,
    /// The SSE link, when the connection is on the fallback.
    sse: Option<SseLink>,
    transports: Transports,
    /// The `accessToken` function, called before each dial.
    token_fn: Option<Function>,
    /// A dial waiting for the token function's promise.
    waiting_token: Option<DialRequest>,
    timer: Option<Timer>,
    /// Promises of requests in flight (bounded by the client's `max_in_flight`): a list, as
    /// a map type of its own would add some 4 KB of tree code to the `.wasm` for a few
    /// dozen entries.
    requests: Vec<(RequestId, Settle)>,
    /// Promises of `connect()` calls waiting for the connection.
    connecting: Vec<Settle>,
    listeners: Vec<(EventKind, Function)>,
}

/// Which transports a connect tries: the WebSocket, then SSE and POSTs when the WebSocket
/// could not open (the `transports` option).
#[derive(Clone, Copy, Debug)]
pub(super) struct Transports {
    pub(super) websocket: bool,
    pub(super) sse: bool,
}

impl Default for Transports {
    fn default() -> Transports {
        Transports {
            websocket: true,
            sse: true,
        }
    }
}

/// One client bound to the browser.
pub(super) struct BrowserDriver {
    state: RefCell<State>,
    /// Whether the event loop of [`BrowserDriver::pump`] is running further up the stack.
    dispatching: Cell<bool>,
    callbacks: Callbacks,
    sse_callbacks: SseCallbacks,
    own: OwnCallbacks,
}

/// The callbacks of the sync client's own inputs: the global `online` event, and the token
/// function's promise. Weak, as the socket's.
struct OwnCallbacks {
    online: Closure<dyn FnMut()>,
    token: Closure<dyn FnMut(JsValue)>,
    token_failed: Closure<dyn FnMut(JsValue)>,
}

impl OwnCallbacks {
    fn new(driver: &std::rc::Weak<BrowserDriver>) -> OwnCallbacks {
        let d = driver.clone();
        let online = Closure::new(move || {
            if let Some(driver) = d.upgrade() {
                driver.on_online();
            }
        });
        let d = driver.clone();
        let token = Closure::new(move |token: JsValue| {
            if let Some(driver) = d.upgrade() {
                driver.on_token(Ok(token));
            }
        });
        let d = driver.clone();
        let token_failed = Closure::new(move |error: JsValue| {
            if let Some(driver) = d.upgrade() {
                driver.on_token(Err(error));
            }
        });
        OwnCallbacks {
            online,
            token,
            token_failed,
        }
    }
}

/// The global object's events (a window's or a worker's).
fn global_events() -> web_sys::EventTarget {
    js_sys::global().unchecked_into()
}

impl BrowserDriver {
    pub(super) fn new(
        client: Client,
        extra_protocols: Vec<String>,
        transports: Transports,
        token_fn: Option<Function>,
    ) -> Rc<BrowserDriver> {
        let driver = Rc::new_cyclic(|weak| BrowserDriver {
            state: RefCell::new(State {
                client,
                extra_protocols,
                socket: None,
                fallback: None,
                sse: None,
                transports,
                token_fn,
                waiting_token: None,
                timer: None,
                requests: Vec::new(),
                connecting: Vec::new(),
                listeners: Vec::new(),
            }),
            dispatching: Cell::new(false),
            callbacks: Callbacks::new(weak),
            sse_callbacks: SseCallbacks::new(weak),
            own: OwnCallbacks::new(weak),
        });
        // The network is back: redial at once rather than at the end of the backoff.
        let online = driver.own.online.as_ref().unchecked_ref();
        let _ = global_events().add_event_listener_with_callback("online", online);
        driver
    }

    /// `"websocket"` or `"sse"` while connected over it, else `None`.
    pub(super) fn transport(&self) -> Option<&'static str> {
        let state = self.state.borrow();
        if state.client.state() != ClientState::Open {
            return None;
        }
        match (&state.socket, &state.sse) {
            (Some(_), _) => Some("websocket"),
            (None, Some(_)) => Some("sse"),
            (None, None) => None,
        }
    }

    /// Reads the client.
    pub(super) fn with_client<R>(&self, f: impl FnOnce(&Client) -> R) -> R {
        f(&self.state.borrow().client)
    }

    /// Runs a request command; its promise settles with the request's one outcome.
    pub(super) fn request(
        self: &Rc<Self>,
        command: impl FnOnce(&mut Client, Instant) -> Result<RequestId, RequestError>,
    ) -> Promise {
        let issued = command(&mut self.state.borrow_mut().client, host::now());
        self.settle_later(issued)
    }

    /// The promise of a command just issued; then the pump. Not generic, so that the dozen
    /// commands share one copy of it (the `.wasm` size matters to browsers).
    #[inline(never)]
    fn settle_later(self: &Rc<Self>, issued: Result<RequestId, RequestError>) -> Promise {
        let promise = match issued {
            Ok(id) => {
                let (promise, settle) = promise();
                self.state.borrow_mut().requests.push((id, settle));
                promise
            }
            Err(error) => Promise::reject(&convert::request_error(&error)),
        };
        // A refused command can still have started the connection.
        self.pump();
        promise
    }

    /// Starts connecting; the promise resolves at the next `connected` (at once when open) and
    /// rejects if the client closes for good first.
    pub(super) fn connect(self: &Rc<Self>) -> Promise {
        let promise = {
            let mut state = self.state.borrow_mut();
            state.client.connect(host::now());
            if state.client.state() == ClientState::Open {
                Promise::resolve(&JsValue::UNDEFINED)
            } else {
                let (promise, settle) = promise();
                state.connecting.push(settle);
                promise
            }
        };
        self.pump();
        promise
    }

    /// Closes for good.
    pub(super) fn disconnect(self: &Rc<Self>) {
        self.state.borrow_mut().client.close(host::now());
        self.pump();
    }

    pub(super) fn add_listener(&self, kind: EventKind, handler: Function) {
        self.state.borrow_mut().listeners.push((kind, handler));
    }

    pub(super) fn remove_listener(&self, kind: EventKind, handler: &Function) {
        let mut state = self.state.borrow_mut();
        if let Some(at) = state
            .listeners
            .iter()
            .position(|(k, h)| *k == kind && h == handler)
        {
            state.listeners.remove(at);
        }
    }

    // ----- inputs ------------------------------------------------------------------------------

    fn is_current(&self, event: &Event) -> bool {
        let state = self.state.borrow();
        match (&state.socket, event.target()) {
            (Some(socket), Some(target)) => {
                AsRef::<JsValue>::as_ref(&target) == AsRef::<JsValue>::as_ref(socket)
            }
            _ => false,
        }
    }

    // ----- outputs -----------------------------------------------------------------------------

    /// Drains the client after an input: transports and timer first, then events.
    #[inline(never)]
    pub(super) fn pump(self: &Rc<Self>) {
        self.drive();
        if self.dispatching.replace(true) {
            // An outer pump is handing out events; it will reach these too.
            return;
        }
        loop {
            let event = self.state.borrow_mut().client.poll_event();
            let Some(event) = event else { break };
            self.dispatch(event);
        }
        self.dispatching.set(false);
    }

    /// Acts on every transmit, then re-arms the timer.
    fn drive(&self) {
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        while let Some(transmit) = state.client.poll_transmit() {
            match transmit {
                ClientTransmit::Connect(dial) => self.dial(state, &dial),
                ClientTransmit::Frame(frame) => {
                    let text = core::str::from_utf8(&frame)
                        .expect("invariant: the client encodes frames as JSON text");
                    if let Some(socket) = &state.socket {
                        // A send on a closing socket throws; its close event follows and
                        // tells the client.
                        let _ = socket.send_with_str(text);
                    } else if let Some(link) = &mut state.sse {
                        link.send(text, &self.sse_callbacks);
                    }
                }
                ClientTransmit::Close { code, reason } => {
                    state.fallback = None;
                    state.waiting_token = None;
                    if let Some(socket) = state.socket.take() {
                        detach(&socket);
                        close(&socket, code, &reason);
                    }
                    // The server reads the stream's end as the session's.
                    if let Some(link) = state.sse.take() {
                        link.close();
                    }
                }
            }
        }
        let now = host::now();
        let next = state.client.poll_timeout();
        if state.timer.as_ref().map(|t| t.deadline) != next {
            if let Some(timer) = state.timer.take() {
                timer.cancel();
            }
            let handler = self.callbacks.timer();
            state.timer = next.map(|deadline| Timer::arm(handler, deadline, now));
        }
    }

    fn dial(&self, state: &mut State, dial: &DialRequest) {
        if let Some(old) = state.socket.take() {
            detach(&old);
            close(&old, CloseCode::NORMAL, "");
        }
        if let Some(old) = state.sse.take() {
            old.close();
        }
        state.waiting_token = None;
        let Some(token_fn) = &state.token_fn else {
            return self.open(state, dial);
        };
        match token_fn.call0(&JsValue::UNDEFINED) {
            Ok(token) if token.is_instance_of::<Promise>() => {
                state.waiting_token = Some(dial.clone());
                let promise: Promise = token.unchecked_into();
                let _ = promise.then2(&self.own.token, &self.own.token_failed);
            }
            Ok(token) => self.open_with_token(state, dial.clone(), &token),
            Err(_) => {
                let reason = "the accessToken function threw";
                state.client.handle_disconnected(host::now(), None, reason);
            }
        }
    }

    /// Dials `dial` with `token` (the token function's answer; none for a non-string).
    fn open_with_token(&self, state: &mut State, mut dial: DialRequest, token: &JsValue) {
        dial.token = token.as_string();
        state.client.set_token(dial.token.clone());
        self.open(state, &dial);
    }

    /// Opens the first of the transports for `dial`.
    fn open(&self, state: &mut State, dial: &DialRequest) {
        state.fallback = state.transports.sse.then(|| dial.clone());
        if !state.transports.websocket {
            return self.fall_back(state);
        }
        let protocols: Array = dial
            .protocols
            .iter()
            .map(|p| JsValue::from_str(p))
            .chain(state.extra_protocols.iter().map(|p| JsValue::from_str(p)))
            .collect();
        // Browsers cannot set handshake headers: the token rides in the query (docs/protocol.md
        // section 3.2).
        match WebSocket::new_with_str_sequence(&dial.url_with_token(), &protocols) {
            Ok(socket) => {
                self.callbacks.attach(&socket);
                state.socket = Some(socket);
            }
            Err(error) => {
                let reason = error.dyn_ref::<js_sys::Error>().map_or_else(
                    || "cannot open WebSocket".to_owned(),
                    |e| e.message().into(),
                );
                state.client.handle_disconnected(host::now(), None, &reason);
            }
        }
    }

    /// Opens the SSE link of the dial kept in [`State::fallback`] (the WebSocket could not
    /// open, or is not among the transports).
    fn fall_back(&self, state: &mut State) {
        let Some(dial) = state.fallback.take() else {
            return;
        };
        let (stream, send) = DialRequest::fallback_urls(&dial.url_with_token());
        match SseLink::open(&stream, send, Tie::Session, &self.sse_callbacks) {
            Ok(link) => state.sse = Some(link),
            Err(_) => {
                let reason = "cannot open EventSource";
                state.client.handle_disconnected(host::now(), None, reason);
            }
        }
    }

    /// Hands one event to its promise or listeners, holding no borrow while JavaScript runs.
    fn dispatch(&self, event: ClientEvent) {
        let (kind, args): (EventKind, Vec<JsValue>) = match event {
            ClientEvent::Response { id, outcome } => {
                let settle = {
                    let requests = &mut self.state.borrow_mut().requests;
                    let at = requests.iter().position(|(r, _)| *r == id);
                    at.map(|at| requests.swap_remove(at).1)
                };
                // Requests the client issues itself (restores, keepalive) have no promise.
                if let Some(settle) = settle {
                    match outcome {
                        Ok(response) => settle.resolve(&convert::response(response)),
                        Err(error) => settle.reject(&convert::request_error(&error)),
                    }
                }
                return;
            }
            ClientEvent::Connected => {
                let waiting = core::mem::take(&mut self.state.borrow_mut().connecting);
                for settle in waiting {
                    settle.resolve(&JsValue::UNDEFINED);
                }
                (EventKind::Connected, vec![])
            }
            ClientEvent::Closed { reason } => {
                let value = convert::close_reason(&reason);
                let waiting = core::mem::take(&mut self.state.borrow_mut().connecting);
                for settle in waiting {
                    let message = "the client closed before connecting";
                    settle.reject(&convert::sync_error(
                        &syncmux::wire::ErrorCode::Disconnected,
                        message,
                    ));
                }
                (EventKind::Closed, vec![value])
            }
            ClientEvent::Disconnected { code, reason } => (
                EventKind::Disconnected,
                vec![convert::disconnected(code.map(|c| c.0), &reason)],
            ),
            ClientEvent::Reconnecting { attempt, delay } => (
                EventKind::Reconnecting,
                vec![
                    JsValue::from(attempt),
                    JsValue::from(delay.as_millis() as f64),
                ],
            ),
            ClientEvent::Error { code, message } => {
                (EventKind::Error, vec![convert::sync_error(&code, &message)])
            }
            ClientEvent::Changes {
                changes, cursor, ..
            } => {
                let value = convert::object("changes", &convert::changes(&changes));
                let cursor = cursor.map_or(JsValue::NULL, |c| JsValue::from_str(&c.to_string()));
                js_sys::Reflect::set(&value, &"cursor".into(), &cursor)
                    .expect("invariant: value is a plain object");
                (EventKind::Change, vec![value])
            }
            ClientEvent::Presence(presence) => {
                (EventKind::Presence, vec![convert::to_js(&presence)])
            }
            ClientEvent::Room(room) => (EventKind::Room, vec![convert::to_js(&room)]),
            ClientEvent::ResyncNeeded { tables } => (
                EventKind::Resync,
                vec![convert::object("tables", &convert::to_js(&tables))],
            ),
            // An event this client has no listener kind for: nobody asked for it.
            _ => return,
        };
        let handlers: Vec<Function> = {
            let state = self.state.borrow();
            let matching = state.listeners.iter().filter(|(k, _)| *k == kind);
            matching.map(|(_, h)| h.clone()).collect()
        };
        let args: Array = args.into_iter().collect();
        for handler in handlers {
            // One throwing listener must not starve the others, nor the client.
            if let Err(error) = handler.apply(&JsValue::UNDEFINED, &args) {
                web_sys::console::error_2(&"syncmux: event listener threw".into(), &error);
            }
        }
    }
}

impl Inputs for BrowserDriver {
    fn on_open(self: &Rc<Self>, event: &Event) {
        if !self.is_current(event) {
            return;
        }
        {
            let mut state = self.state.borrow_mut();
            state.fallback = None;
            let selected = state.socket.as_ref().map(WebSocket::protocol);
            // The browser reports "no subprotocol" as the empty string.
            let selected = selected.as_deref().filter(|p| !p.is_empty());
            state.client.handle_connected(host::now(), selected);
        }
        self.pump();
    }

    fn on_message(self: &Rc<Self>, event: &MessageEvent) {
        if !self.is_current(event) {
            return;
        }
        {
            let mut state = self.state.borrow_mut();
            match event.data().as_string() {
                Some(text) => state.client.handle_message(host::now(), Bytes::from(text)),
                // The protocol is text only; the core decides what a binary frame means.
                None => state
                    .client
                    .handle_binary(host::now(), binary_len(&event.data())),
            }
        }
        self.pump();
    }

    fn on_close(self: &Rc<Self>, event: &CloseEvent) {
        if !self.is_current(event) {
            return;
        }
        {
            let mut state = self.state.borrow_mut();
            if let Some(socket) = state.socket.take() {
                detach(&socket);
            }
            if state.fallback.is_some() {
                // It never opened (blocked, say): the same dial over SSE and POSTs.
                drop(state);
                self.fall_back(&mut self.state.borrow_mut());
                self.pump();
                return;
            }
            // A failed dial is also reported here (after an `error` event), as 1006.
            let code = CloseCode(event.code());
            let reason = event.reason();
            state
                .client
                .handle_disconnected(host::now(), Some(code), &reason);
        }
        self.pump();
    }

    fn on_timer(self: &Rc<Self>) {
        {
            let mut state = self.state.borrow_mut();
            state.timer = None;
            state.client.handle_timeout(host::now());
        }
        self.pump();
    }
}

impl BrowserDriver {
    fn on_online(self: &Rc<Self>) {
        self.state.borrow_mut().client.reconnect_now(host::now());
        self.pump();
    }

    fn on_token(self: &Rc<Self>, token: Result<JsValue, JsValue>) {
        {
            let mut state = self.state.borrow_mut();
            let Some(dial) = state.waiting_token.take() else {
                return; // a dial since, or a close
            };
            match token {
                Ok(token) => self.open_with_token(&mut state, dial, &token),
                Err(_) => {
                    let reason = "the accessToken function's promise was rejected";
                    state.client.handle_disconnected(host::now(), None, reason);
                }
            }
        }
        self.pump();
    }
}

impl SseInputs for BrowserDriver {
    fn on_sse_open(self: &Rc<Self>, event: &MessageEvent) {
        {
            let mut state = self.state.borrow_mut();
            let state = &mut *state;
            let target = event.target().map_or(JsValue::NULL, JsValue::from);
            let Some(link) = state.sse.as_mut().filter(|link| link.is(&target)) else {
                return;
            };
            if !link.opened(event) {
                return;
            }
            state.client.handle_connected(host::now(), None);
        }
        self.pump();
    }

    fn on_sse_message(self: &Rc<Self>, event: &MessageEvent) {
        {
            let mut state = self.state.borrow_mut();
            let target = event.target().map_or(JsValue::NULL, JsValue::from);
            if !state.sse.as_ref().is_some_and(|link| link.is(&target)) {
                return;
            }
            if let Some(text) = event.data().as_string() {
                state.client.handle_message(host::now(), Bytes::from(text));
            }
        }
        self.pump();
    }

    fn on_sse_end(self: &Rc<Self>, event: &Event) {
        {
            let mut state = self.state.borrow_mut();
            if !state
                .sse
                .as_ref()
                .is_some_and(|link| link.is(&sse::target(event)))
            {
                return;
            }
            if let Some(link) = state.sse.take() {
                link.close();
            }
            let (code, reason) = match event.dyn_ref::<MessageEvent>() {
                Some(close) => {
                    let (code, reason) = sse::close_of(close);
                    (Some(CloseCode(code)), reason)
                }
                None => (None, "the event stream failed".to_owned()),
            };
            state.client.handle_disconnected(host::now(), code, &reason);
        }
        self.pump();
    }

    fn on_posted(self: &Rc<Self>, target: &JsValue, accepted: bool) {
        {
            let mut state = self.state.borrow_mut();
            let Some(link) = state.sse.as_mut().filter(|link| link.is(target)) else {
                return; // an earlier link's
            };
            if accepted {
                link.posted(&self.sse_callbacks);
                return;
            }
            // Not taken (the session is gone), or the request failed.
            if let Some(link) = state.sse.take() {
                link.close();
            }
            let reason = "a POST of frames failed";
            state.client.handle_disconnected(host::now(), None, reason);
        }
        self.pump();
    }
}

impl Drop for BrowserDriver {
    /// JavaScript freed the client: close the socket, stop the timer.
    fn drop(&mut self) {
        let state = self.state.get_mut();
        if let Some(socket) = state.socket.take() {
            detach(&socket);
            close(&socket, CloseCode::NORMAL, "client freed");
        }
        if let Some(link) = state.sse.take() {
            link.close();
        }
        let online = self.own.online.as_ref().unchecked_ref();
        let _ = global_events().remove_event_listener_with_callback("online", online);
        if let Some(timer) = state.timer.take() {
            timer.cancel();
        }
    }
}

/// Closes with `code` and `reason`. Browsers accept only 1000 and 3000–4999 and a reason of at
/// most 123 bytes; anything else closes without a code rather than throwing.
fn close(socket: &WebSocket, code: CloseCode, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    if socket
        .close_with_code_and_reason(code.0, &reason[..end])
        .is_err()
    {
        let _ = socket.close();
    }
}

/// The length of a binary message's data (an `ArrayBuffer` or a `Blob`; 0 if neither).
fn binary_len(data: &JsValue) -> usize {
    let len = js_sys::Reflect::get(data, &JsValue::from_str("byteLength"))
        .ok()
        .and_then(|v| v.as_f64())
        .or_else(|| {
            js_sys::Reflect::get(data, &JsValue::from_str("size"))
                .ok()
                .and_then(|v| v.as_f64())
        });
    len.map_or(0, |n| n as usize)
}

//! The browser's OT client: a JavaScript `OtClient` class over the browser's `WebSocket`,
//! driving an [`OtClient`](syncmux::ot::OtClient) (README, "The OT profile").
//!
//! ```js
//! import init, { OtClient } from "syncmux-ot";   // the package of feature `ot`
//! await init();
//! const doc = new OtClient("wss://ot.example/ot", { clientId: "tab-1", token: "T" });
//! doc.on("change", (op) => editor.apply(op));    // others' edits, as open-ot text ops
//! doc.edit([{ r: 5 }, { i: " world" }]);          // throws if it does not fit the text
//! console.log(doc.text, doc.revision, doc.state);
//! ```
//!
//! As for `SyncClient`, the adapter only moves bytes and ticks; the state machine fetches a
//! snapshot on every (re)connect and re-sends its pending edit rebased. It has no dial output,
//! so the adapter redials a lost connection after `reconnectDelay` ms, doubled per attempt up
//! to `maxReconnectDelay`. Listeners run with no borrow held and may call back in.

use core::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use js_sys::{Function, Reflect};
use wasm_bindgen::prelude::*;
use web_sys::{CloseEvent, Event, MessageEvent, WebSocket};

use crate::callbacks::{detach, Callbacks, Inputs};
use crate::host::{self, Timer};
use syncmux::ot::{OtClient, OtClientConfig, OtClientEvent, OtClientState, TextOp};
use syncmux::Instant;

/// The JavaScript OT client (`new OtClient(url, options)`).
#[wasm_bindgen(js_name = OtClient)]
pub struct BrowserOtClient {
    driver: Rc<Driver>,
}

struct Driver {
    state: RefCell<State>,
    callbacks: RefCell<Option<Callbacks>>,
}

struct State {
    client: OtClient,
    url: String,
    socket: Option<WebSocket>,
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
    /// once. Options: `clientId` (default random), `docId` (default `doc-1`), `token` (sent
    /// as `?token=`), `reconnectDelay` (ms, default 500), `maxReconnectDelay` (ms, default
    /// 10000). Throws a `TypeError` on bad options.
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
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str("token=");
            url.push_str(&String::from(js_sys::encode_uri_component(&token)));
        }
        let base_delay = number(&options, "reconnectDelay").map_or(500, |n| n.max(1.0) as u64);
        let max_delay = number(&options, "maxReconnectDelay").map_or(10_000, |n| n.max(1.0) as u64);
        let driver = Rc::new(Driver {
            state: RefCell::new(State {
                client,
                url,
                socket: None,
                open: false,
                timer: None,
                redial: None,
                delay: base_delay,
                base_delay,
                max_delay: max_delay.max(base_delay),
                closed: false,
                listeners: Vec::new(),
            }),
            callbacks: RefCell::new(None),
        });
        *driver.callbacks.borrow_mut() = Some(Callbacks::new(&Rc::downgrade(&driver)));
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
        let value: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| js_sys::TypeError::new(&e.to_string()))?;
        let op = TextOp::from_json(value).map_err(|e| js_sys::TypeError::new(&e.to_string()))?;
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
        let socket = {
            let mut state = self.driver.state.borrow_mut();
            state.closed = true;
            state.redial = None;
            if let Some(t) = state.timer.take() {
                t.cancel();
            }
            state.socket.take()
        };
        if let Some(socket) = socket {
            detach(&socket);
            let _ = socket.close();
        }
    }
}

impl Drop for BrowserOtClient {
    fn drop(&mut self) {
        self.close();
    }
}

impl Driver {
    fn dial(&self) {
        let callbacks = self.callbacks.borrow();
        let Some(cb) = callbacks.as_ref() else {
            return;
        };
        let mut state = self.state.borrow_mut();
        if state.closed || state.socket.is_some() {
            return;
        }
        state.redial = None;
        match WebSocket::new(&state.url) {
            Ok(socket) => {
                cb.attach(&socket);
                state.socket = Some(socket);
            }
            Err(_) => {
                let now = host::now();
                state.schedule_redial(now);
            }
        }
    }

    /// After every input: send the frames, re-arm the timer, hand out the events.
    fn pump(&self) {
        let mut events = Vec::new();
        {
            let callbacks = self.callbacks.borrow();
            let mut state = self.state.borrow_mut();
            let state = &mut *state;
            while let Some(frame) = state.client.poll_transmit() {
                if let (Some(socket), true) = (&state.socket, state.open) {
                    let text = String::from_utf8_lossy(&frame);
                    // A failed send shows up as a close event.
                    let _ = socket.send_with_str(&text);
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
                if let (Some(at), Some(cb)) = (next, callbacks.as_ref()) {
                    state.timer = Some(Timer::arm(cb.timer(), at, host::now()));
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
        {
            let mut state = self.state.borrow_mut();
            state.open = true;
            state.delay = state.base_delay;
            state.client.handle_connected(host::now());
        }
        self.emit("connected", &JsValue::UNDEFINED);
        self.pump();
    }

    fn on_message(self: &Rc<Self>, event: &MessageEvent) {
        if let Some(text) = event.data().as_string() {
            self.state
                .borrow_mut()
                .client
                .handle_message(host::now(), Bytes::from(text));
            self.pump();
        }
    }

    fn on_close(self: &Rc<Self>, _: &CloseEvent) {
        let was_open = {
            let mut state = self.state.borrow_mut();
            if let Some(socket) = state.socket.take() {
                detach(&socket);
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

impl State {
    fn schedule_redial(&mut self, now: Instant) {
        self.redial = Some(now + core::time::Duration::from_millis(self.delay));
        self.delay = (self.delay * 2).min(self.max_delay);
    }
}

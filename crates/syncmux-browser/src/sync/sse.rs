//! The fallback when the page's WebSocket cannot open (a proxy or network that blocks it):
//! the same protocol over an `EventSource` (`GET /sync/sse`) for the server's frames and
//! `fetch` POSTs (`POST /sync/send`) for the client's, as `syncmux-server` serves them
//! (docs/protocol.md section 2.3). The driver hands it frames and gets its events through
//! [`SseInputs`]; every protocol decision stays the core's.
//!
//! Frames written while a POST is under way wait and leave together in the next one, so the
//! server handles them in order. The `EventSource` never reconnects by itself: an error ends
//! the link, and the core's backoff decides when to dial again (over the WebSocket first).

use std::rc::{Rc, Weak};

use js_sys::{Function, Promise, Reflect};
use wasm_bindgen::prelude::*;
use web_sys::{Event, EventSource, MessageEvent};

#[wasm_bindgen]
extern "C" {
    /// The global `fetch`, so that the client also runs in a Web Worker.
    #[wasm_bindgen(js_name = fetch)]
    fn fetch(url: &str, init: &JsValue) -> Promise;
}

/// What the driver does with a link's events.
pub(super) trait SseInputs: 'static {
    /// The stream named its session: the link is open.
    fn on_sse_open(self: &Rc<Self>, event: &MessageEvent);
    /// A frame.
    fn on_sse_message(self: &Rc<Self>, event: &MessageEvent);
    /// The server closed the session (`code`, `reason`), or the link failed (`None`).
    fn on_sse_end(self: &Rc<Self>, target: &JsValue, close: Option<(u16, String)>);
    /// A POST was answered (`url`, naming its session, and whether the server took its
    /// frames), or failed (`None`).
    fn on_posted(self: &Rc<Self>, answer: Option<(String, bool)>);
}

/// The callbacks of a driver's links, made once per client; weak, as the socket's.
pub(super) struct SseCallbacks {
    session: Closure<dyn FnMut(MessageEvent)>,
    message: Closure<dyn FnMut(MessageEvent)>,
    close: Closure<dyn FnMut(MessageEvent)>,
    error: Closure<dyn FnMut(Event)>,
    posted: Closure<dyn FnMut(JsValue)>,
    failed: Closure<dyn FnMut(JsValue)>,
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
        let close = Closure::new(move |event: MessageEvent| {
            if let Some(driver) = d.upgrade() {
                let close = event.data().as_string().and_then(|data| {
                    let data = js_sys::JSON::parse(&data).ok()?;
                    let code = Reflect::get(&data, &"code".into()).ok()?.as_f64()?;
                    let reason = Reflect::get(&data, &"reason".into()).ok()?.as_string();
                    Some((code as u16, reason.unwrap_or_default()))
                });
                let target = event.target().map_or(JsValue::NULL, JsValue::from);
                // A close event the server sent carries data; one without is the link's end.
                driver.on_sse_end(&target, close.or(Some((1006, String::new()))));
            }
        });
        let d = driver.clone();
        let error = Closure::new(move |event: Event| {
            if let Some(driver) = d.upgrade() {
                let target = event.target().map_or(JsValue::NULL, JsValue::from);
                driver.on_sse_end(&target, None);
            }
        });
        let d = driver.clone();
        let posted = Closure::new(move |response: JsValue| {
            if let Some(driver) = d.upgrade() {
                let get = |key: &str| Reflect::get(&response, &key.into()).ok();
                let url = get("url").and_then(|u| u.as_string()).unwrap_or_default();
                let accepted = get("status").and_then(|s| s.as_f64()) == Some(202.0);
                driver.on_posted(Some((url, accepted)));
            }
        });
        let d = driver.clone();
        let failed = Closure::new(move |_: JsValue| {
            if let Some(driver) = d.upgrade() {
                driver.on_posted(None);
            }
        });
        SseCallbacks {
            session,
            message,
            close,
            error,
            posted,
            failed,
        }
    }
}

/// One link: its stream, its session once named, and the frames waiting for a POST.
pub(super) struct SseLink {
    pub(super) source: EventSource,
    session: Option<String>,
    /// `http(s)://host/.../send`.
    send: String,
    queued: Vec<String>,
    posting: bool,
}

impl SseLink {
    /// Opens the stream for the WebSocket URL `ws_url` (its `ws://` as `http://`, its path's
    /// last segment `ws` as `sse`; the query, token included, as it is).
    pub(super) fn open(ws_url: &str, callbacks: &SseCallbacks) -> Result<SseLink, JsValue> {
        let (stream, send) = syncmux::DialRequest::fallback_urls(ws_url);
        let source = EventSource::new(&stream)?;
        let on = |name: &str, f: &Function| source.add_event_listener_with_callback(name, f);
        on("session", callbacks.session.as_ref().unchecked_ref())?;
        on("close", callbacks.close.as_ref().unchecked_ref())?;
        source.set_onmessage(Some(callbacks.message.as_ref().unchecked_ref()));
        source.set_onerror(Some(callbacks.error.as_ref().unchecked_ref()));
        Ok(SseLink {
            source,
            session: None,
            send,
            queued: Vec::new(),
            posting: false,
        })
    }

    /// The session the stream named (its first event), from `event`'s data.
    pub(super) fn opened(&mut self, event: &MessageEvent) -> bool {
        let session = event.data().as_string().and_then(|data| {
            let data = js_sys::JSON::parse(&data).ok()?;
            Reflect::get(&data, &"session".into()).ok()?.as_string()
        });
        self.session = session;
        self.session.is_some()
    }

    /// Whether `target` is this link's stream.
    pub(super) fn is(&self, target: &JsValue) -> bool {
        AsRef::<JsValue>::as_ref(&self.source) == target
    }

    /// Sends `frame` (in the next POST when one is under way).
    pub(super) fn send(&mut self, frame: &str, callbacks: &SseCallbacks) {
        self.queued.push(frame.to_owned());
        if !self.posting {
            self.post(callbacks);
        }
    }

    /// Whether a POST to `url` was this link's (its session is in the URL's query).
    pub(super) fn posted_to(&self, url: &str) -> bool {
        let session = self.session.as_deref().unwrap_or("\0");
        url.ends_with(&format!("?session={session}"))
    }

    /// Whether a POST of this link is under way.
    pub(super) fn posting(&self) -> bool {
        self.posting
    }

    /// A POST was answered: the next one goes, with what waited meanwhile.
    pub(super) fn posted(&mut self, callbacks: &SseCallbacks) {
        self.posting = false;
        if !self.queued.is_empty() {
            self.post(callbacks);
        }
    }

    fn post(&mut self, callbacks: &SseCallbacks) {
        let Some(session) = &self.session else {
            return; // sent once the stream names its session
        };
        let body = self.queued.join("\n");
        self.queued.clear();
        // The session in the query, and the body as plain text: a request a browser sends
        // cross-origin without a preflight; and the answer's URL names the link it was for.
        let url = format!("{}?session={session}", self.send);
        let init = js_sys::Object::new();
        let set = |key: &str, value: &JsValue| {
            let _ = Reflect::set(&init, &key.into(), value);
        };
        set("method", &"POST".into());
        set("body", &body.into());
        self.posting = true;
        let _ = fetch(&url, &init).then2(&callbacks.posted, &callbacks.failed);
    }

    /// Ends the link: its stream stops reaching the driver.
    pub(super) fn close(&self) {
        self.source.set_onmessage(None);
        self.source.set_onerror(None);
        self.source.close();
    }
}

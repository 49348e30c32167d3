//! The JavaScript callbacks that bring a socket's and the timer's events to a driver: the sync
//! client's (`sync::driver::BrowserDriver`) and the OT client's alike.

use std::rc::{Rc, Weak};

use js_sys::Function;
use wasm_bindgen::prelude::*;
use web_sys::{CloseEvent, Event, MessageEvent, WebSocket};

/// What a driver does with the events of its socket and its timer.
pub(super) trait Inputs: 'static {
    /// The socket opened.
    fn on_open(self: &Rc<Self>, event: &Event);
    /// A frame arrived.
    fn on_message(self: &Rc<Self>, event: &MessageEvent);
    /// The socket closed, or could not open.
    fn on_close(self: &Rc<Self>, event: &CloseEvent);
    /// The timer fired.
    fn on_timer(self: &Rc<Self>);
}

/// The JavaScript callbacks, created once per client. They hold a weak reference, so the
/// client is freed when JavaScript drops (or `free`s) it, whatever its socket is doing.
pub(super) struct Callbacks {
    open: Closure<dyn FnMut(Event)>,
    message: Closure<dyn FnMut(MessageEvent)>,
    close: Closure<dyn FnMut(CloseEvent)>,
    timer: Closure<dyn FnMut()>,
}

impl Callbacks {
    pub(super) fn new<D: Inputs>(driver: &Weak<D>) -> Callbacks {
        let d = driver.clone();
        let open = Closure::new(move |event: Event| {
            if let Some(driver) = d.upgrade() {
                driver.on_open(&event);
            }
        });
        let d = driver.clone();
        let message = Closure::new(move |event: MessageEvent| {
            if let Some(driver) = d.upgrade() {
                driver.on_message(&event);
            }
        });
        let d = driver.clone();
        let close = Closure::new(move |event: CloseEvent| {
            if let Some(driver) = d.upgrade() {
                driver.on_close(&event);
            }
        });
        let d = driver.clone();
        let timer = Closure::new(move || {
            if let Some(driver) = d.upgrade() {
                driver.on_timer();
            }
        });
        Callbacks {
            open,
            message,
            close,
            timer,
        }
    }

    /// Routes `socket`'s events to the driver.
    pub(super) fn attach(&self, socket: &WebSocket) {
        socket.set_onopen(Some(self.open.as_ref().unchecked_ref()));
        socket.set_onmessage(Some(self.message.as_ref().unchecked_ref()));
        socket.set_onclose(Some(self.close.as_ref().unchecked_ref()));
    }

    /// The timer's handler, for `setTimeout`.
    pub(super) fn timer(&self) -> &Function {
        self.timer.as_ref().unchecked_ref()
    }
}

/// Stops a socket's events from reaching the client (it is no longer the current one).
pub(super) fn detach(socket: &WebSocket) {
    socket.set_onopen(None);
    socket.set_onmessage(None);
    socket.set_onclose(None);
}

//! The browser services the adapter reads: the clock, entropy and timers. These are the only
//! places the crate touches real time or randomness in the browser (the crate docs).
//!
//! They are bound as globals rather than through `window`, so the client also runs in a Web
//! Worker.

use js_sys::Function;
use wasm_bindgen::prelude::*;

use syncmux::Instant;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;

    #[wasm_bindgen(catch, js_namespace = crypto, js_name = getRandomValues)]
    fn get_random_values(buf: &mut [u8]) -> Result<JsValue, JsValue>;

    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &Function, millis: f64) -> JsValue;

    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(handle: &JsValue);
}

/// Monotonic time: `performance.now()` (fractional milliseconds since the page's time origin)
/// in nanoseconds. The float-to-integer `as` saturates, so no value of it can panic.
pub(super) fn now() -> Instant {
    Instant::from_nanos((performance_now() * 1e6) as u64)
}

/// Eight bytes from `crypto.getRandomValues`, for the backoff jitter seed and default node ids.
pub(super) fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    if get_random_values(&mut buf).is_err() {
        // Every browser and worker has Web Crypto; the clock still separates clients.
        return now().as_nanos();
    }
    u64::from_le_bytes(buf)
}

/// The longest delay `setTimeout` honours: a longer one fires at once.
const MAX_TIMEOUT_MS: f64 = 2_147_483_647.0;

/// One armed `setTimeout`.
#[derive(Debug)]
pub(super) struct Timer {
    /// When the client asked to be woken.
    pub(super) deadline: Instant,
    handle: JsValue,
}

impl Timer {
    /// Calls `handler` at `deadline` (rounded up to a whole millisecond, so that it does not
    /// fire before the deadline and find nothing due).
    pub(super) fn arm(handler: &Function, deadline: Instant, now: Instant) -> Timer {
        let millis = ((deadline - now).as_nanos() as f64 / 1e6).ceil();
        let handle = set_timeout(handler, millis.min(MAX_TIMEOUT_MS));
        Timer { deadline, handle }
    }

    /// Cancels it.
    pub(super) fn cancel(self) {
        clear_timeout(&self.handle);
    }
}

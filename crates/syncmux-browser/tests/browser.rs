//! The browser adapter in a real headless Chromium, against the real `syncmux-server`.
//!
//! Run by `tests/browser/run.mjs`, which starts the server (and a native client that answers
//! pushes to table `ctl`), then builds this file with the server's URL baked in as
//! `SYNCMUX_TEST_URL` and runs it with `wasm-bindgen-test-runner` and chromedriver.
#![cfg(target_arch = "wasm32")]

use js_sys::{Function, Promise, Reflect, JSON};
use syncmux_browser::BrowserClient as SyncClient;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// Set by the runner; the max frame it starts the server with is `MAX_FRAME`.
const URL: Option<&str> = option_env!("SYNCMUX_TEST_URL");
/// Set by the runner: the same server behind a proxy that refuses WebSocket upgrades.
const PROXY_URL: Option<&str> = option_env!("SYNCMUX_TEST_PROXY_URL");
const MAX_FRAME: usize = 65_536;

fn json(text: &str) -> JsValue {
    JSON::parse(text).expect("test JSON")
}

fn get(value: &JsValue, key: &str) -> JsValue {
    Reflect::get(value, &key.into()).expect("object")
}

fn text(value: &JsValue, key: &str) -> String {
    get(value, key).as_string().unwrap_or_default()
}

/// The options of a test client: `node`, retry delays of `delay` to `max` ms, no keepalive.
fn options(node: &str, delay: u32, max: u32) -> JsValue {
    json(&format!(
        r#"{{"nodeId":"{node}","reconnectDelay":{delay},"maxReconnectDelay":{max},"pingInterval":0,"requestTimeout":10000}}"#
    ))
}

/// The test server's URL.
fn url() -> String {
    URL.expect("SYNCMUX_TEST_URL: run tests/browser/run.mjs")
        .to_owned()
}

/// A client of the test server with short retry delays and no keepalive.
fn client(node: &str) -> SyncClient {
    SyncClient::new(url(), options(node, 100, 400)).expect("valid options")
}

/// Makes the server drop `c`'s connection: two frames over its limit (the first gets a
/// FRAME_TOO_LARGE error frame, the repeat a close with 1009). The two pings' outcomes.
async fn make_the_server_drop(c: &SyncClient) -> [Result<JsValue, JsValue>; 2] {
    let big = || JsValue::from_str(&"x".repeat(MAX_FRAME * 2));
    let (first, second) = (c.ping(big()), c.ping(big()));
    [JsFuture::from(first).await, JsFuture::from(second).await]
}

fn record(table: &str, pk: &str, node: &str, value: &str) -> JsValue {
    let ts = js_sys::Date::now() as i64 * 1_000_000;
    json(&format!(
        r#"[{{"table":"{table}","pk":"{pk}","field":"v","crdt_type":"lww","hlc":"{ts}:0:{node}","node_id":"{node}","value":"{value}"}}]"#
    ))
}

async fn ok(promise: Promise) -> JsValue {
    match JsFuture::from(promise).await {
        Ok(value) => value,
        Err(e) => panic!(
            "rejected: {}",
            text(&e, "code") + ": " + &text(&e, "message")
        ),
    }
}

/// The first argument of the next `name` event. Listen before acting.
struct Next {
    promise: Option<Promise>,
    handler: Function,
    name: &'static str,
}

fn next(client: &SyncClient, name: &'static str) -> Next {
    let mut handler = None;
    let promise = Promise::new(&mut |resolve, _| handler = Some(resolve));
    let handler = handler.expect("executor ran");
    client.on(name, handler.clone()).expect("known event");
    Next {
        promise: Some(promise),
        handler,
        name,
    }
}

impl Next {
    async fn get(mut self, client: &SyncClient) -> JsValue {
        let value = ok(self.promise.take().expect("once")).await;
        client
            .off(self.name, self.handler.clone())
            .expect("known event");
        value
    }
}

#[wasm_bindgen_test]
async fn connect_push_pull() {
    let c = client("wasm-push");
    ok(c.connect()).await;
    assert!(c.connected());
    assert_eq!(c.state(), "open");
    let pushed = ok(c.push(record("wasm_items", "1", "wasm-push", "hello"))).await;
    assert_eq!(get(&pushed, "merged").as_f64(), Some(1.0));
    let latest = text(&pushed, "latest_hlc");
    assert!(
        latest.ends_with(":0:wasm-push"),
        "HLCs reach JS as exact strings: {latest}"
    );
    let pulled = ok(c.pull("wasm_items".into(), JsValue::UNDEFINED)).await;
    let changes = js_sys::Array::from(&get(&pulled, "changes"));
    assert_eq!(changes.length(), 1);
    let change = changes.get(0);
    assert_eq!(text(&change, "value"), "hello");
    assert_eq!(text(&change, "hlc"), latest);
    // `since` is exclusive: nothing after the newest.
    let after = ok(c.pull(json(r#"["wasm_items"]"#), latest.as_str().into())).await;
    assert_eq!(js_sys::Array::from(&get(&after, "changes")).length(), 0);
    // After a cursor: exactly what came later, even with an older HLC.
    let cursor = text(&pulled, "cursor");
    let late = r#"[{"table":"wasm_items","pk":"2","field":"title","crdt_type":"lww","hlc":"1:0:offline","node_id":"offline","value":"late"}]"#;
    ok(c.push(json(late))).await;
    let from = json(&format!(r#"{{"cursor":"{cursor}"}}"#));
    let resumed = ok(c.pull("wasm_items".into(), from)).await;
    let changes = js_sys::Array::from(&get(&resumed, "changes"));
    assert_eq!(changes.length(), 1);
    assert_eq!(text(&changes.get(0), "value"), "late");
    let bad = c.pull("wasm_items".into(), json(r#"{"cursor":7}"#));
    assert!(wasm_bindgen_futures::JsFuture::from(bad).await.is_err());
    c.disconnect();
    assert_eq!(c.state(), "closed");
}

#[wasm_bindgen_test]
async fn subscribe_receives_a_change_pushed_by_a_native_client() {
    let c = client("wasm-sub");
    ok(c.subscribe("native_feed".into(), JsValue::UNDEFINED)).await;
    let change = next(&c, "change");
    // The runner's native client watches `ctl` and pushes to the table named by the pk.
    ok(c.push(record("ctl", "native_feed", "wasm-sub", "please"))).await;
    let batch = change.get(&c).await;
    let changes = js_sys::Array::from(&get(&batch, "changes"));
    let first = changes.get(0);
    assert_eq!(text(&first, "table"), "native_feed");
    assert_eq!(text(&first, "node_id"), "native-cli");
    assert!(get(&batch, "cursor").is_string());
    c.disconnect();
}

#[wasm_bindgen_test]
async fn presence_events_reach_every_member() {
    let (a, b) = (client("wasm-pa"), client("wasm-pb"));
    let joined = next(&a, "presence");
    ok(a.update_presence("wasm-topic".into(), json(r#"{"name":"a"}"#))).await;
    let event = joined.get(&a).await;
    assert_eq!(text(&event, "type"), "join");
    assert_eq!(text(&event, "node_id"), "wasm-pa");

    let other = next(&a, "presence");
    ok(b.update_presence("wasm-topic".into(), json(r#"{"name":"b"}"#))).await;
    let event = other.get(&a).await;
    assert_eq!(text(&event, "node_id"), "wasm-pb");
    assert_eq!(text(&get(&event, "data"), "name"), "b");

    let snapshot = ok(a.get_presence("wasm-topic".into())).await;
    assert_eq!(js_sys::Array::from(&get(&snapshot, "states")).length(), 2);

    let left = next(&a, "presence");
    b.disconnect();
    let event = left.get(&a).await;
    assert_eq!(text(&event, "type"), "leave");
    assert_eq!(text(&event, "node_id"), "wasm-pb");
    a.disconnect();
}

#[wasm_bindgen_test]
async fn an_error_frame_rejects_the_promise_with_code_and_message() {
    let c = client("wasm-err");
    let refused = JsFuture::from(c.broadcast("not-joined".into(), json("{}"))).await;
    let error = refused.expect_err("only members broadcast");
    assert_eq!(text(&error, "code"), "NOT_A_MEMBER");
    assert!(!text(&error, "message").is_empty());
    assert_eq!(text(&error, "name"), "SyncError");
    assert!(error.is_instance_of::<js_sys::Error>());
    // A bad argument is refused the same way, without reaching the server.
    let bad = JsFuture::from(c.push(json(r#"[{"table":1}]"#))).await;
    assert_eq!(
        text(&bad.expect_err("bad record"), "code"),
        "INVALID_PAYLOAD"
    );
    c.disconnect();
}

#[wasm_bindgen_test]
async fn reconnects_and_resubscribes_after_the_server_drops_the_connection() {
    let c = client("wasm-recon");
    ok(c.subscribe("wasm_recon".into(), JsValue::UNDEFINED)).await;
    let reconnecting = next(&c, "reconnecting");
    let connected = next(&c, "connected");
    // The unanswered pings fail with DISCONNECTED.
    for ping in make_the_server_drop(&c).await {
        let dropped = ping.expect_err("connection dropped");
        assert_eq!(text(&dropped, "code"), "DISCONNECTED");
    }
    assert_eq!(reconnecting.get(&c).await.as_f64(), Some(1.0));
    connected.get(&c).await;
    // The subscription was restored: a change from another client arrives.
    let change = next(&c, "change");
    let other = client("wasm-recon-2");
    ok(other.push(record("wasm_recon", "1", "wasm-recon-2", "after"))).await;
    let batch = change.get(&c).await;
    let first = js_sys::Array::from(&get(&batch, "changes")).get(0);
    assert_eq!(text(&first, "value"), "after");
    c.disconnect();
    other.disconnect();
}

/// Behind a proxy that refuses WebSocket upgrades (the runner's), a client connects over an
/// `EventSource` and `fetch` POSTs instead, and pulls, pushes, subscribes, shares presence
/// and talks in a room with a client on the WebSocket, as it would over one.
#[wasm_bindgen_test]
async fn falls_back_to_sse_when_the_websocket_is_blocked() {
    let proxied = PROXY_URL.expect("SYNCMUX_TEST_PROXY_URL: run tests/browser/run.mjs");
    let options = options("wasm-sse", 100, 400);
    let sse = SyncClient::new(proxied.to_owned(), options).expect("valid options");
    let ws = client("wasm-sse-peer");
    ok(sse.connect()).await;
    ok(ws.connect()).await;
    assert_eq!(sse.transport().as_deref(), Some("sse"));
    assert_eq!(ws.transport().as_deref(), Some("websocket"));

    // Live changes both ways, and a pull.
    ok(sse.subscribe("wasm_sse".into(), JsValue::UNDEFINED)).await;
    ok(ws.subscribe("wasm_sse".into(), JsValue::UNDEFINED)).await;
    let change = next(&sse, "change");
    ok(ws.push(record("wasm_sse", "1", "wasm-sse-peer", "to sse"))).await;
    let batch = change.get(&sse).await;
    let first = js_sys::Array::from(&get(&batch, "changes")).get(0);
    assert_eq!(text(&first, "value"), "to sse");
    assert!(get(&batch, "cursor").is_string());
    let change = next(&ws, "change");
    ok(sse.push(record("wasm_sse", "2", "wasm-sse", "from sse"))).await;
    let batch = change.get(&ws).await;
    let first = js_sys::Array::from(&get(&batch, "changes")).get(0);
    assert_eq!(text(&first, "value"), "from sse");
    let pulled = ok(sse.pull("wasm_sse".into(), JsValue::UNDEFINED)).await;
    assert_eq!(js_sys::Array::from(&get(&pulled, "changes")).length(), 2);

    // Presence and rooms.
    ok(sse.update_presence("wasm-sse-topic".into(), json(r#"{"name":"sse"}"#))).await;
    let snapshot = ok(ws.get_presence("wasm-sse-topic".into())).await;
    let states = js_sys::Array::from(&get(&snapshot, "states"));
    assert_eq!(text(&states.get(0), "node_id"), "wasm-sse");
    ok(sse.join_room("wasm-sse-room".into(), JsValue::UNDEFINED)).await;
    ok(ws.join_room("wasm-sse-room".into(), JsValue::UNDEFINED)).await;
    let message = loop {
        let room = next(&sse, "room");
        ok(ws.broadcast("wasm-sse-room".into(), json(r#""hi""#))).await;
        let event = room.get(&sse).await;
        if text(&event, "event") == "message" {
            break event;
        }
    };
    assert_eq!(get(&message, "data").as_string().as_deref(), Some("hi"));
    sse.disconnect();
    ws.disconnect();
    assert_eq!(sse.transport(), None);
}

/// A token function is called before each connect (a reconnect included), and a promise
/// it returns is waited for.
#[wasm_bindgen_test]
async fn an_access_token_function_is_called_before_each_connect() {
    for (name, body) in [
        ("value", "globalThis.__wasmTokenValue = (globalThis.__wasmTokenValue || 0) + 1; return 'tok';"),
        ("promise", "globalThis.__wasmTokenPromise = (globalThis.__wasmTokenPromise || 0) + 1; return Promise.resolve('tok');"),
    ] {
        let options = options(&format!("wasm-token-{name}"), 100, 400);
        let token = Function::new_no_args(body);
        Reflect::set(&options, &"accessToken".into(), &token).expect("object");
        let c = SyncClient::new(url(), options).expect("valid options");
        let calls = || {
            let key = if name == "value" { "__wasmTokenValue" } else { "__wasmTokenPromise" };
            get(&js_sys::global(), key).as_f64()
        };
        ok(c.connect()).await;
        assert_eq!(calls(), Some(1.0), "{name}");
        // The server drops the connection (two frames over its limit); the client redials.
        let connected = next(&c, "connected");
        let _ = make_the_server_drop(&c).await;
        connected.get(&c).await;
        assert_eq!(calls(), Some(2.0), "{name}: called again for the reconnect");
        c.disconnect();
    }
}

/// The browser's `online` event redials at once, rather than at the end of the backoff.
#[wasm_bindgen_test]
async fn the_online_event_redials_at_once() {
    let c = SyncClient::new(url(), options("wasm-online", 60_000, 60_000)).expect("valid options");
    ok(c.connect()).await;
    let reconnecting = next(&c, "reconnecting");
    let _ = make_the_server_drop(&c).await;
    let delay = reconnecting.get(&c).await;
    assert_eq!(c.state(), "reconnecting");
    let online = web_sys::Event::new("online").expect("an event");
    let target: web_sys::EventTarget = js_sys::global().unchecked_into();
    target.dispatch_event(&online).expect("dispatched");
    // Within 5 s, where the backoff would wait 30 s or more.
    for _ in 0..100 {
        if c.state() == "open" {
            break;
        }
        pause(50).await;
    }
    assert_eq!(
        c.state(),
        "open",
        "not redialed before the backoff's {delay:?} ms"
    );
    c.disconnect();
}

#[wasm_bindgen_test]
fn bad_options_and_unknown_events_throw() {
    let url = "ws://127.0.0.1:9/sync/ws".to_owned();
    let bad = SyncClient::new(url.clone(), json(r#"{"reconnectDelay":"soon"}"#));
    assert!(bad.is_err_and(|e| e.is_instance_of::<js_sys::TypeError>()));
    assert!(SyncClient::new("http://x".into(), JsValue::UNDEFINED).is_err());
    let c = SyncClient::new(url, JsValue::UNDEFINED).expect("defaults");
    assert!(c.node_id().starts_with("browser-"));
    assert_eq!(c.state(), "idle");
    assert!(c.on("nonsense", Function::new_no_args("")).is_err());
}

/// Resolves after `ms` milliseconds (the browser's `setTimeout`).
async fn pause(ms: i32) {
    let promise = Promise::new(&mut |resolve, _| {
        let global = js_sys::global();
        let set_timeout = Reflect::get(&global, &"setTimeout".into()).expect("setTimeout");
        let set_timeout: Function = set_timeout.unchecked_into();
        let _ = set_timeout.call2(&JsValue::UNDEFINED, &resolve, &JsValue::from(ms));
    });
    let _ = JsFuture::from(promise).await;
}

/// The browser's `OtClient` against `syncmux-server`'s `/ot`: two clients edit at once
/// and converge; one receives the other's edit as a `change` event; a bad op throws.
#[wasm_bindgen_test]
async fn ot_clients_converge_over_the_ot_endpoint() {
    use syncmux_browser::BrowserOtClient as OtClient;
    let base = URL.expect("SYNCMUX_TEST_URL: run tests/browser/run.mjs");
    let url = base.replace("/sync/ws", "/ot");
    let options = |id: &str| {
        json(&format!(
            r#"{{"clientId":"{id}","docId":"wasm-ot","reconnectDelay":100}}"#
        ))
    };
    let a = OtClient::new(url.clone(), options("wasm-a")).expect("valid options");
    let b = OtClient::new(url, options("wasm-b")).expect("valid options");
    let change = next_ot(&b, "change");
    for _ in 0..100 {
        if a.state() == "synchronized" && b.state() == "synchronized" {
            break;
        }
        pause(20).await;
    }
    a.edit(json(r#"[{"i":"Hello"}]"#)).expect("fits");
    b.edit(json(r#"[{"i":"World"}]"#)).expect("fits");
    assert!(a.edit(json(r#"[{"d":99}]"#)).is_err(), "past the end");
    assert!(a.edit(json(r#""not an op""#)).is_err());
    let op = JsFuture::from(change).await.expect("a change");
    assert!(js_sys::Array::is_array(&op));
    for _ in 0..200 {
        if !a.pending() && !b.pending() && a.text() == b.text() && a.revision() == 2.0 {
            break;
        }
        pause(20).await;
    }
    assert!(
        a.text() == "HelloWorld" || a.text() == "WorldHello",
        "{}",
        a.text()
    );
    assert_eq!(a.text(), b.text());
    assert_eq!(b.revision(), 2.0);
    a.close();
    b.close();
}

/// A promise of the first argument of the OT client's next `name` event.
fn next_ot(client: &syncmux_browser::BrowserOtClient, name: &str) -> Promise {
    let mut resolve_fn = None;
    let promise = Promise::new(&mut |resolve, _| resolve_fn = Some(resolve));
    let resolve = resolve_fn.expect("the executor runs at once");
    let once = Closure::once_into_js(move |value: JsValue| {
        let _ = resolve.call1(&JsValue::UNDEFINED, &value);
    });
    client.on(name.to_owned(), once.unchecked_into());
    promise
}

/// Behind the proxy that refuses WebSocket upgrades, an `OtClient` falls back to open-ot's
/// HTTP transport (`GET /ot/events`, `POST /ot/messages`) and edits a document with a client
/// on the WebSocket: its op is acked and reaches the other, and the other's reaches it.
#[wasm_bindgen_test]
async fn ot_client_falls_back_to_sse_when_the_websocket_is_blocked() {
    use syncmux_browser::BrowserOtClient as OtClient;
    let proxied = PROXY_URL.expect("SYNCMUX_TEST_PROXY_URL: run tests/browser/run.mjs");
    let options = |id: &str| {
        json(&format!(
            r#"{{"clientId":"{id}","docId":"wasm-ot-sse","reconnectDelay":100}}"#
        ))
    };
    let sse = OtClient::new(proxied.replace("/sync/ws", "/ot"), options("wasm-ot-sse"))
        .expect("valid options");
    let ws = OtClient::new(url().replace("/sync/ws", "/ot"), options("wasm-ot-ws"))
        .expect("valid options");
    for _ in 0..250 {
        if sse.state() == "synchronized" && ws.state() == "synchronized" {
            break;
        }
        pause(20).await;
    }
    assert_eq!(sse.state(), "synchronized", "the fallback did not connect");
    assert_eq!(sse.transport().as_deref(), Some("sse"));
    assert_eq!(ws.transport().as_deref(), Some("websocket"));

    let (acked, seen) = (next_ot(&sse, "ack"), next_ot(&ws, "change"));
    sse.edit(json(r#"[{"i":"over SSE"}]"#)).expect("fits");
    let revision = JsFuture::from(acked).await.expect("acked");
    assert_eq!(revision.as_f64(), Some(1.0));
    JsFuture::from(seen).await.expect("a change");
    assert_eq!(ws.text(), "over SSE");

    let seen = next_ot(&sse, "change");
    ws.edit(json(r#"[{"r":8},{"i":", and WS"}]"#))
        .expect("fits");
    JsFuture::from(seen).await.expect("a change");
    assert_eq!(sse.text(), "over SSE, and WS");
    assert_eq!(sse.revision(), 2.0);
    assert!(!sse.pending());
    assert_eq!(sse.transport().as_deref(), Some("sse"));
    sse.close();
    ws.close();
    assert_eq!(sse.transport(), None);
}

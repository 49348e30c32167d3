//! The sync client: the JavaScript `SyncClient` class (feature `sync`), over the browser's
//! `WebSocket` and, when it cannot open, an `EventSource` and `fetch` POSTs (`crate::sse`).

mod convert;
mod driver;

use std::rc::Rc;

use js_sys::{Function, Promise};
use wasm_bindgen::prelude::*;

use crate::host;
use convert::Options;
use driver::{BrowserDriver, EventKind};
use syncmux::payload::{ChangeRecord, PullRequest, Subscribe};
use syncmux::{Client, ClientState, Instant, RequestError, RequestId};

#[wasm_bindgen(typescript_custom_section)]
const TYPESCRIPT: &'static str = r#"
/** Options of `new SyncClient(url, options)`; durations in milliseconds. */
export interface SyncClientOptions {
  /** This node's id (default: `browser-` and 16 random hex digits). `nodeID` is accepted too. */
  nodeId?: string;
  /** A bearer token, sent as the `access_token` query parameter (browsers cannot set headers);
   *  or a function called before each connect that gives it (or a promise of it), so that a
   *  refreshed token needs no new client. */
  accessToken?: string | (() => string | Promise<string>);
  /** Base reconnect delay; attempt k waits a random delay in [d/2, d], d = min(max, base·2^(k−1)). Default 5000. */
  reconnectDelay?: number;
  /** Ceiling of the reconnect delay. Default 30000. */
  maxReconnectDelay?: number;
  /** Give up (a `closed` event) after this many failed attempts in a row. Default: never. */
  maxReconnectAttempts?: number;
  /** Keepalive ping interval; 0 disables it. Default 30000. */
  pingInterval?: number;
  /** No frame within this long after a keepalive ping means the connection is dead. Default 10000. */
  pongTimeout?: number;
  /** A request unanswered this long fails with `TIMEOUT`; 0 disables it. Default 30000. */
  requestTimeout?: number;
  /** Subprotocols offered after `syncmux.v1`. */
  protocols?: string[];
  /** The transports a connect tries, in this order: the WebSocket, then (when it cannot open,
   *  as behind a proxy that blocks it) an `EventSource` and `fetch` POSTs to the same server.
   *  Every reconnect tries the WebSocket first again. Default `["websocket", "sse"]`. */
  transports?: ("websocket" | "sse")[];
}

/** A hybrid logical clock, as `"<ts>:<c>:<node>"` (or an object, whose `ts` must fit a double). */
export type Hlc = string | { ts: number; c: number; node: string };

/** A change record (docs/protocol.md section 5). Unknown fields pass through. */
export interface ChangeRecord {
  table: string; pk: string; field: string; crdt_type: string; hlc: Hlc; node_id: string;
  value?: any; tombstone?: boolean; counter_delta?: any; set_op?: any; list_op?: any;
  [extra: string]: any;
}

export interface PullResponse { changes: ChangeRecord[]; latest_hlc: string; cursor?: string; recovered?: boolean }
export interface PushResponse { merged: number; latest_hlc: string; cursor?: string }
/** The answer to a `subscribe` (where its live stream starts); `null` for other acknowledgements. */
export type Ack = null | { recovered: boolean; cursor: string };
/** Where a pull or subscribe starts: after a server position (`cursor`, from an earlier pull,
 *  ack or `change` event), with `since` as the fallback, or after an HLC alone. */
export interface From { since?: Hlc; cursor?: string }
export interface PresenceEvent { type: "join" | "update" | "leave"; node_id: string; topic: string; data?: any }
export interface PresenceSnapshot {
  topic: string;
  states: { node_id: string; topic: string; data: any; updated_at: any }[];
}
export interface RoomEvent {
  event: "members" | "join" | "leave" | "message"; room: string; node_id?: string; data?: any;
  members?: { node_id: string; data?: any }[];
}
/** What a rejected promise (and the `error` event) carries: a stable wire `code` and a message. */
export interface SyncError extends Error { name: "SyncError"; code: string }

/** Events of `on(event, handler)` and their handlers. */
export interface SyncClientEvents {
  connected: () => void;
  disconnected: (info: { code: number | null; reason: string }) => void;
  reconnecting: (attempt: number, delayMs: number) => void;
  /** Closed for good: `disconnect()`, a terminal close code (4401, 4403, 4426) or too many attempts. */
  closed: (info: { reason: "local" | "server" | "protocol_mismatch" | "max_attempts"; code: number | null; message: string }) => void;
  error: (error: SyncError) => void;
  change: (batch: { changes: ChangeRecord[]; cursor: string | null }) => void;
  presence: (event: PresenceEvent) => void;
  room: (event: RoomEvent) => void;
  /** A restored subscription could not resume without a gap: resynchronise these tables. */
  resync: (info: { tables: string[] }) => void;
}
"#;

/// The JavaScript client (`new SyncClient(url, options)`).
#[wasm_bindgen(js_name = SyncClient)]
pub struct BrowserClient {
    driver: Rc<BrowserDriver>,
}

#[wasm_bindgen(js_class = SyncClient)]
impl BrowserClient {
    /// A client for the server at `url` (`ws://` or `wss://`). It connects on `connect()` or
    /// on its first operation. Throws a `TypeError` on bad options.
    #[wasm_bindgen(constructor)]
    pub fn new(
        url: String,
        #[wasm_bindgen(unchecked_param_type = "SyncClientOptions | undefined")] options: JsValue,
    ) -> Result<BrowserClient, JsValue> {
        let options = Options::from_js(&options)?;
        let config = options.config(url, host::random_u64())?;
        let client = Client::new(config).map_err(|e| JsValue::from_str(&e.to_string()))?;
        Ok(BrowserClient {
            driver: BrowserDriver::new(
                client,
                options.protocols,
                options.transports,
                options.token_fn,
            ),
        })
    }

    /// Connects; resolves once connected, rejects if the client closes for good first.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn connect(&self) -> Promise {
        self.driver.connect()
    }

    /// Closes for good (code 1000); pending requests fail with `DISCONNECTED`. `connect()`
    /// starts again.
    pub fn disconnect(&self) {
        self.driver.disconnect();
    }

    /// Whether the connection is open.
    #[wasm_bindgen(getter)]
    pub fn connected(&self) -> bool {
        self.driver.with_client(|c| c.state() == ClientState::Open)
    }

    /// `"idle"`, `"connecting"`, `"open"`, `"reconnecting"` or `"closed"`.
    #[wasm_bindgen(
        getter,
        unchecked_return_type = "\"idle\" | \"connecting\" | \"open\" | \"reconnecting\" | \"closed\""
    )]
    pub fn state(&self) -> String {
        let name = self.driver.with_client(|c| match c.state() {
            ClientState::Idle => "idle",
            ClientState::Connecting => "connecting",
            ClientState::Open => "open",
            ClientState::WaitingToReconnect => "reconnecting",
            ClientState::Closed => "closed",
        });
        name.to_owned()
    }

    /// The transport of the open connection: `"websocket"`, `"sse"`, or `null` while not
    /// connected.
    #[wasm_bindgen(getter, unchecked_return_type = "\"websocket\" | \"sse\" | null")]
    pub fn transport(&self) -> Option<String> {
        self.driver.transport().map(str::to_owned)
    }

    /// This node's id.
    #[wasm_bindgen(getter, js_name = nodeId)]
    pub fn node_id(&self) -> String {
        self.driver.with_client(|c| c.config().node_id.clone())
    }

    /// Pulls the changes of `tables`: all of them, or those after `from.cursor` (exactly
    /// what came after that server position, late changes with old HLCs included; from a
    /// server that cannot serve it, those after `from.since`), or after `from.since`.
    #[wasm_bindgen(unchecked_return_type = "Promise<PullResponse>")]
    pub fn pull(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string | string[]")] tables: JsValue,
        #[wasm_bindgen(unchecked_param_type = "From | Hlc | undefined")] from: JsValue,
    ) -> Promise {
        let start = convert::start(&tables, &from);
        request_from(&self.driver, start, |c, now, (tables, since, cursor)| {
            c.pull(now, PullRequest::new(tables).since(since).after(cursor))
        })
    }

    /// Pushes change records as this node.
    #[wasm_bindgen(unchecked_return_type = "Promise<PushResponse>")]
    pub fn push(
        &self,
        #[wasm_bindgen(unchecked_param_type = "ChangeRecord[]")] changes: JsValue,
    ) -> Promise {
        let changes: Vec<ChangeRecord> = match convert::from_js(&changes) {
            Ok(changes) => changes,
            Err(e) => return reject(&format!("changes: {e}")),
        };
        self.driver.request(|c, now| c.push(now, changes))
    }

    /// Subscribes to the live changes of `tables`, replaying first those after
    /// `from.cursor` (the ack says `recovered: false` when the server could not serve it:
    /// the application resynchronises) or after `from.since`. The ack says where the live
    /// stream starts; the subscription is restored after every reconnect.
    #[wasm_bindgen(unchecked_return_type = "Promise<Ack>")]
    pub fn subscribe(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string | string[]")] tables: JsValue,
        #[wasm_bindgen(unchecked_param_type = "From | Hlc | undefined")] from: JsValue,
    ) -> Promise {
        let start = convert::start(&tables, &from);
        request_from(&self.driver, start, |c, now, (tables, since, cursor)| {
            c.subscribe(now, Subscribe::new(tables).since(since).after(cursor))
        })
    }

    /// Unsubscribes from `tables`.
    #[wasm_bindgen(unchecked_return_type = "Promise<Ack>")]
    pub fn unsubscribe(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string | string[]")] tables: JsValue,
    ) -> Promise {
        match convert::tables(&tables) {
            Ok(tables) => self.driver.request(|c, now| c.unsubscribe(now, tables)),
            Err(e) => reject(&e),
        }
    }

    /// Joins `topic` with `data`, or updates this node's state there; `null` leaves.
    #[wasm_bindgen(js_name = updatePresence, unchecked_return_type = "Promise<Ack>")]
    pub fn update_presence(&self, topic: String, data: JsValue) -> Promise {
        match convert::raw_json(&data) {
            Ok(data) => self
                .driver
                .request(|c, now| c.update_presence(now, topic, data)),
            Err(e) => reject(&format!("data: {e}")),
        }
    }

    /// Leaves `topic`.
    #[wasm_bindgen(js_name = leavePresence, unchecked_return_type = "Promise<Ack>")]
    pub fn leave_presence(&self, topic: String) -> Promise {
        self.driver.request(|c, now| c.leave_presence(now, topic))
    }

    /// The members of `topic`.
    #[wasm_bindgen(js_name = getPresence, unchecked_return_type = "Promise<PresenceSnapshot>")]
    pub fn get_presence(&self, topic: String) -> Promise {
        self.driver.request(|c, now| c.get_presence(now, topic))
    }

    /// Joins `room`, with optional `data` shown to the other members.
    #[wasm_bindgen(js_name = joinRoom, unchecked_return_type = "Promise<Ack>")]
    pub fn join_room(&self, room: String, data: JsValue) -> Promise {
        match convert::optional_json(&data) {
            Ok(data) => self.driver.request(|c, now| c.join_room(now, room, data)),
            Err(e) => reject(&format!("data: {e}")),
        }
    }

    /// Leaves `room`.
    #[wasm_bindgen(js_name = leaveRoom, unchecked_return_type = "Promise<Ack>")]
    pub fn leave_room(&self, room: String) -> Promise {
        self.driver.request(|c, now| c.leave_room(now, room))
    }

    /// Sends `data` to the other members of `room`.
    #[wasm_bindgen(unchecked_return_type = "Promise<Ack>")]
    pub fn broadcast(&self, room: String, data: JsValue) -> Promise {
        match convert::raw_json(&data) {
            Ok(data) => self.driver.request(|c, now| c.broadcast(now, room, data)),
            Err(e) => reject(&format!("data: {e}")),
        }
    }

    /// Pings the server; resolves with the echoed payload.
    #[wasm_bindgen(unchecked_return_type = "Promise<any>")]
    pub fn ping(&self, payload: JsValue) -> Promise {
        match convert::raw_json(&payload) {
            Ok(payload) => self.driver.request(|c, now| c.ping(now, payload)),
            Err(e) => reject(&format!("payload: {e}")),
        }
    }

    /// Adds a listener (see `SyncClientEvents`). Throws a `TypeError` for an unknown event.
    pub fn on(
        &self,
        #[wasm_bindgen(unchecked_param_type = "keyof SyncClientEvents")] event: &str,
        #[wasm_bindgen(unchecked_param_type = "(...args: any[]) => void")] handler: Function,
    ) -> Result<(), JsValue> {
        self.driver.add_listener(event_kind(event)?, handler);
        Ok(())
    }

    /// Removes a listener added with `on`.
    pub fn off(
        &self,
        #[wasm_bindgen(unchecked_param_type = "keyof SyncClientEvents")] event: &str,
        #[wasm_bindgen(unchecked_param_type = "(...args: any[]) => void")] handler: Function,
    ) -> Result<(), JsValue> {
        self.driver.remove_listener(event_kind(event)?, &handler);
        Ok(())
    }
}

fn event_kind(name: &str) -> Result<EventKind, JsValue> {
    EventKind::from_name(name)
        .ok_or_else(|| js_sys::TypeError::new(&format!("unknown SyncClient event {name:?}")).into())
}

/// A pull or a subscribe: `command` gets the tables and where to start, as
/// [`convert::start`] read them from the arguments; arguments that did not read reject the
/// promise.
fn request_from(
    driver: &Rc<BrowserDriver>,
    start: Result<convert::Start, String>,
    command: impl FnOnce(&mut Client, Instant, convert::Start) -> Result<RequestId, RequestError>,
) -> Promise {
    match start {
        Ok(start) => driver.request(|c, now| command(c, now, start)),
        Err(e) => reject(&e),
    }
}

/// A promise rejected with an `INVALID_PAYLOAD` `SyncError`: a bad argument is reported the
/// same way as every other failure of a request.
fn reject(message: &str) -> Promise {
    Promise::reject(&convert::invalid_argument(message))
}

//! One gateway WebSocket connection, as Discord's gateway v10 runs it: HELLO on connect,
//! HEARTBEAT → ACK (unless the session is zombied), IDENTIFY (token, intents, shard, identify
//! budget and `max_concurrency` buckets) → READY + one GUILD_CREATE per guild of the shard,
//! RESUME (also before HELLO, and on the same socket after INVALID_SESSION `d: true`) → replay
//! of missed dispatches + RESUMED, and the documented close codes for bad input. Dispatches
//! reach the connection through its session's channel (see
//! [`super::state::State::dispatch`]); whether a session may be resumed is decided by
//! [`super::resume`].

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State as AxumState};
use axum::response::Response;
use futures::{Sink, SinkExt, Stream, StreamExt};
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::payload;
use super::resume;
use super::state::{intents, routes_to, Attachment, Outbound, Session, State};
use super::Emulator;

/// Largest payload a client may send (Discord closes with 4002 above it).
const MAX_PAYLOAD: usize = 4096;
/// Client payloads allowed per 60 s (heartbeats are not counted).
const SEND_LIMIT: u32 = 120;
/// How long after op 7 RECONNECT the server closes the socket itself.
const RECONNECT_GRACE: Duration = Duration::from_secs(5);

/// `GET /` with `Upgrade: websocket`: the gateway.
pub(crate) async fn upgrade(
    AxumState(emu): AxumState<Emulator>,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let version = query.as_deref().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("v="))
            .map(str::to_owned)
    });
    ws.on_upgrade(move |socket: WebSocket| async move {
        let (sink, stream) = socket.split();
        run_connection(emu, sink, stream, version).await;
    })
}

/// Why a connection loop ended.
enum End {
    /// The client closed (with this code, if any) or vanished.
    ClientGone(Option<u16>),
    /// We closed with a close frame carrying this code.
    Closed(u16),
    /// We dropped the TCP connection on purpose.
    Dropped,
}

/// Why an IDENTIFY or RESUME was refused.
enum Refusal {
    /// Close the connection with this code.
    Close(u16, &'static str),
    /// Send op 9 INVALID_SESSION (`d: false`) and keep the connection.
    Invalid(&'static str),
}

/// What handling one client frame asks for.
enum Flow {
    Continue,
    Close(u16, &'static str),
}

struct Conn {
    emu: Emulator,
    id: u64,
    tx: mpsc::UnboundedSender<Outbound>,
    session: Option<String>,
    heartbeat_deadline: Instant,
    window_start: Instant,
    window_count: u32,
}

/// Runs one connection over any WebSocket sink/stream pair until it ends.
pub(crate) async fn run_connection<S, R>(
    emu: Emulator,
    mut sink: S,
    mut stream: R,
    version: Option<String>,
) where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let id = {
        let mut st = emu.lock();
        st.counters.connections += 1;
        st.next_conn_id()
    };
    let span = tracing::info_span!(
        "gateway_connection",
        conn = id,
        session = tracing::field::Empty,
        shard = tracing::field::Empty
    );
    async move {
        if let Some(v) = version.as_deref() {
            if v != "10" && v != "9" {
                let _ = close(&mut sink, 4012, "invalid api version").await;
                return;
            }
        }
        let interval = Duration::from_millis(emu.shared.cfg.heartbeat_interval_ms);
        let hello = payload::op_frame(10, json!({"heartbeat_interval": interval.as_millis() as u64}));
        if sink.send(Message::Text(hello.into())).await.is_err() {
            return;
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut conn = Conn {
            emu: emu.clone(),
            id,
            tx,
            session: None,
            heartbeat_deadline: Instant::now() + heartbeat_timeout(interval),
            window_start: Instant::now(),
            window_count: 0,
        };
        let shutdown = emu.shared.shutdown.cancelled();
        tokio::pin!(shutdown);
        let mut reconnect_at: Option<Instant> = None;
        let end = loop {
            let deadline = reconnect_at.map_or(conn.heartbeat_deadline, |r| r.min(conn.heartbeat_deadline));
            tokio::select! {
                () = &mut shutdown => {
                    // Resumable, as when Discord restarts a gateway node.
                    let _ = close(&mut sink, 4000, "emulator shutting down").await;
                    break End::Closed(4000);
                }
                frame = stream.next() => match frame {
                    None | Some(Err(_)) => break End::ClientGone(None),
                    Some(Ok(Message::Close(frame))) => break End::ClientGone(frame.map(|f| f.code)),
                    Some(Ok(Message::Text(text))) => match conn.handle(text.as_str(), &mut sink).await {
                        Flow::Continue => {}
                        Flow::Close(code, reason) => {
                            tracing::info!(code, reason, "closing connection");
                            let _ = close(&mut sink, code, reason).await;
                            break End::Closed(code);
                        }
                    },
                    Some(Ok(Message::Binary(_))) => {
                        let _ = close(&mut sink, 4002, "binary frames are not accepted with encoding=json").await;
                        break End::Closed(4002);
                    }
                    Some(Ok(_)) => {}
                },
                out = rx.recv() => {
                    let Some(out) = out else { break End::Dropped };
                    let sent = match out {
                        Outbound::Frame(frame) => sink.send(Message::Text(frame.as_ref().into())).await,
                        Outbound::Reconnect => {
                            reconnect_at = Some(Instant::now() + RECONNECT_GRACE);
                            sink.send(Message::Text(payload::op_frame(7, Value::Null).into())).await
                        }
                        Outbound::InvalidSession(resumable) => {
                            conn.emu.lock().counters.invalid_sessions += 1;
                            // The session was already detached (or forgotten) under the lock;
                            // the socket is now unauthenticated and may IDENTIFY, or RESUME
                            // when `resumable`, as on Discord.
                            conn.session = None;
                            sink.send(Message::Text(payload::op_frame(9, json!(resumable)).into())).await
                        }
                        Outbound::RequestHeartbeat => {
                            sink.send(Message::Text(payload::op_frame(1, Value::Null).into())).await
                        }
                        Outbound::Drop => break End::Dropped,
                        Outbound::Close(code, reason) => {
                            let _ = close(&mut sink, code, &reason).await;
                            break End::Closed(code);
                        }
                    };
                    if sent.is_err() {
                        break End::ClientGone(None);
                    }
                }
                () = tokio::time::sleep_until(deadline.into()) => {
                    if reconnect_at.is_some_and(|r| r <= Instant::now()) {
                        let _ = close(&mut sink, 4000, "reconnect requested").await;
                    } else {
                        tracing::info!("no heartbeat in time; disconnecting (the session stays resumable)");
                        let _ = close(&mut sink, 4000, "heartbeat timed out").await;
                    }
                    break End::Closed(4000);
                }
            }
        };
        conn.detach(&end);
    }
    .instrument(span)
    .await;
}

async fn close<S: Sink<Message> + Unpin>(
    sink: &mut S,
    code: u16,
    reason: &str,
) -> Result<(), S::Error> {
    sink.send(Message::Close(Some(CloseFrame {
        code,
        reason: reason.to_owned().into(),
    })))
    .await
}

/// A client that has not heartbeated for two intervals (plus slack for slow loops) is gone.
fn heartbeat_timeout(interval: Duration) -> Duration {
    interval * 2 + Duration::from_secs(2)
}

fn strip_bot(token: &str) -> &str {
    token.strip_prefix("Bot ").unwrap_or(token)
}

impl Conn {
    async fn handle<S: Sink<Message> + Unpin>(&mut self, text: &str, sink: &mut S) -> Flow {
        if text.len() > MAX_PAYLOAD {
            return Flow::Close(4002, "payload too large");
        }
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return Flow::Close(4002, "decode error");
        };
        let Some(op) = frame["op"].as_u64() else {
            return Flow::Close(4002, "decode error: missing op");
        };
        if op != 1 {
            if self.window_start.elapsed() > Duration::from_secs(60) {
                self.window_start = Instant::now();
                self.window_count = 0;
            }
            self.window_count += 1;
            if self.window_count > SEND_LIMIT {
                return Flow::Close(4008, "rate limited");
            }
        }
        let d = &frame["d"];
        match op {
            1 => {
                self.heartbeat_deadline = Instant::now()
                    + heartbeat_timeout(Duration::from_millis(
                        self.emu.shared.cfg.heartbeat_interval_ms,
                    ));
                let zombie = self
                    .session
                    .as_ref()
                    .is_some_and(|sid| self.emu.lock().sessions.get(sid).is_some_and(|s| s.zombie));
                if zombie {
                    tracing::debug!("zombie session: heartbeat not acknowledged");
                } else if sink
                    .send(Message::Text(
                        r#"{"op":11,"d":null,"s":null,"t":null}"#.into(),
                    ))
                    .await
                    .is_err()
                {
                    return Flow::Close(4000, "send failed");
                }
                Flow::Continue
            }
            2 => {
                let was_authenticated = self.session.is_some();
                let flow = self.identify(d, sink).await;
                if was_authenticated || self.session.is_none() {
                    self.emu.lock().counters.identifies_refused += 1;
                }
                flow
            }
            6 => {
                let was_authenticated = self.session.is_some();
                let flow = self.resume(d, sink).await;
                if was_authenticated || self.session.is_none() {
                    self.emu.lock().counters.resumes_refused += 1;
                }
                flow
            }
            3 | 4 | 8 | 31 | 43 => {
                if self.session.is_none() {
                    Flow::Close(4003, "not authenticated")
                } else {
                    // Presence, voice and member requests are accepted and have no effect here.
                    Flow::Continue
                }
            }
            _ => Flow::Close(4001, "unknown opcode"),
        }
    }

    async fn invalid_session<S: Sink<Message> + Unpin>(&self, sink: &mut S, why: &str) -> Flow {
        tracing::info!(why, "invalid session");
        self.emu.lock().counters.invalid_sessions += 1;
        match sink
            .send(Message::Text(payload::op_frame(9, json!(false)).into()))
            .await
        {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close(4000, "send failed"),
        }
    }

    async fn identify<S: Sink<Message> + Unpin>(&mut self, d: &Value, sink: &mut S) -> Flow {
        if self.session.is_some() {
            return Flow::Close(4005, "already authenticated");
        }
        let cfg = &self.emu.shared.cfg;
        let Some(token) = d["token"].as_str() else {
            return Flow::Close(4001, "identify without token");
        };
        if strip_bot(token) != cfg.token {
            return Flow::Close(4004, "authentication failed");
        }
        let Some(bits) = d["intents"].as_u64() else {
            return Flow::Close(4001, "identify without intents");
        };
        if bits & !intents::ALL != 0 {
            return Flow::Close(4013, "invalid intent(s)");
        }
        if bits & intents::PRIVILEGED & !cfg.allowed_intents != 0 {
            return Flow::Close(4014, "disallowed intent(s)");
        }
        let shard = match &d["shard"] {
            Value::Null => [0, 1],
            Value::Array(a) if a.len() == 2 => match (a[0].as_u64(), a[1].as_u64()) {
                (Some(id), Some(n)) if n >= 1 && id < n && n <= u64::from(u32::MAX) => {
                    [id as u32, n as u32]
                }
                _ => return Flow::Close(4010, "invalid shard"),
            },
            _ => return Flow::Close(4010, "invalid shard"),
        };
        let large_threshold = d["large_threshold"].as_u64().unwrap_or(50).clamp(50, 250);
        let resume_url = self.emu.gateway_url();
        let started = {
            let mut st = self.emu.lock();
            self.start_session(&mut st, bits, shard, large_threshold, &resume_url)
        };
        let (session_id, application_id) = match started {
            Ok(started) => started,
            Err(Refusal::Close(code, reason)) => return Flow::Close(code, reason),
            Err(Refusal::Invalid(why)) => return self.invalid_session(sink, why).await,
        };
        let span = tracing::Span::current();
        span.record("session", session_id.as_str());
        span.record("shard", format!("[{}, {}]", shard[0], shard[1]));
        tracing::info!(intents = bits, application_id, "identified");
        self.session = Some(session_id);
        Flow::Continue
    }

    /// Checks the identify budget and buckets, then creates the session and queues READY and
    /// the shard's GUILD_CREATEs.
    fn start_session(
        &self,
        st: &mut State,
        bits: u64,
        shard: [u32; 2],
        large_threshold: u64,
        resume_url: &str,
    ) -> Result<(String, u64), Refusal> {
        let cfg = &self.emu.shared.cfg;
        {
            let in_shard = st
                .guilds
                .keys()
                .filter(|g| routes_to(shard, Some(**g)))
                .count();
            if in_shard > 2500 {
                return Err(Refusal::Close(4011, "sharding required"));
            }
            let now = Instant::now();
            if now >= st.budget.reset_at {
                st.budget.remaining = st.budget.total;
                st.budget.reset_at = now + Duration::from_secs(24 * 3600);
            }
            if st.budget.remaining == 0 {
                return Err(Refusal::Invalid("daily identify budget exhausted"));
            }
            let bucket = shard[0] % cfg.max_concurrency.max(1);
            let window = Duration::from_millis(cfg.identify_window_ms);
            if let Some(last) = st.budget.last_by_bucket.get(&bucket) {
                if now.duration_since(*last) < window {
                    return Err(Refusal::Invalid("identify rate limit (max_concurrency)"));
                }
            }
            st.budget.last_by_bucket.insert(bucket, now);
            st.budget.remaining -= 1;
            st.counters.identifies += 1;
            let session_id = hex::encode(rand::thread_rng().gen::<[u8; 16]>());
            st.sessions.insert(
                session_id.clone(),
                Session {
                    id: session_id.clone(),
                    shard,
                    intents: bits,
                    seq: 0,
                    buffer: Default::default(),
                    conn: Some(Attachment {
                        conn_id: self.id,
                        tx: self.tx.clone(),
                    }),
                    disconnected_at: None,
                    zombie: false,
                    resumes: 0,
                    resumable: true,
                },
            );
            let guild_ids: Vec<u64> = st
                .guilds
                .keys()
                .copied()
                .filter(|g| routes_to(shard, Some(*g)))
                .collect();
            let ready = payload::ready(
                &st.bot,
                &guild_ids,
                &session_id,
                resume_url,
                shard,
                st.application_id,
            );
            st.dispatch_to(&session_id, "READY", &ready);
            for g in guild_ids {
                let d = st.guild_create_value(g, large_threshold);
                st.dispatch_to(&session_id, "GUILD_CREATE", &d);
            }
            Ok((session_id, st.application_id))
        }
    }

    async fn resume<S: Sink<Message> + Unpin>(&mut self, d: &Value, sink: &mut S) -> Flow {
        if self.session.is_some() {
            return Flow::Close(4005, "already authenticated");
        }
        let Some(token) = d["token"].as_str() else {
            return Flow::Close(4001, "resume without token");
        };
        if strip_bot(token) != self.emu.shared.cfg.token {
            return Flow::Close(4004, "authentication failed");
        }
        let (Some(session_id), Some(seq)) = (
            d["session_id"].as_str(),
            d["seq"].as_u64().or(d["seq"].is_null().then_some(0)),
        ) else {
            return Flow::Close(4001, "resume without session_id or seq");
        };
        let resumed = {
            let mut st = self.emu.lock();
            self.attach_resumed(&mut st, session_id, seq)
        };
        let shard = match resumed {
            Ok(shard) => shard,
            Err(Refusal::Close(code, reason)) => return Flow::Close(code, reason),
            Err(Refusal::Invalid(why)) => return self.invalid_session(sink, why).await,
        };
        let span = tracing::Span::current();
        span.record("session", session_id);
        span.record("shard", format!("[{}, {}]", shard[0], shard[1]));
        self.session = Some(session_id.to_owned());
        Flow::Continue
    }

    /// Moves the session to this connection and queues the missed frames, then RESUMED.
    ///
    /// A refused RESUME forgets a disconnected session: op 9 `d: false` and 4007 both tell the
    /// client to start a new session, so a second try must not succeed. A session that still
    /// has a live connection is left to it.
    fn attach_resumed(
        &self,
        st: &mut State,
        session_id: &str,
        seq: u64,
    ) -> Result<[u32; 2], Refusal> {
        {
            let policy = st.resume;
            let Some(session) = st.sessions.get_mut(session_id) else {
                return Err(Refusal::Invalid("resume of an unknown or expired session"));
            };
            if let Err(refused) = resume::check(session, seq, &policy, Instant::now()) {
                tracing::info!(%refused, seq, session_seq = session.seq, "resume refused");
                if session.conn.is_none() {
                    st.sessions.remove(session_id);
                }
                return Err(match refused.close_code() {
                    Some(code) => Refusal::Close(code, "invalid seq"),
                    None => Refusal::Invalid("the session cannot be resumed"),
                });
            }
            if let Some(old) = session.conn.take() {
                // Discord ends the old connection when its session resumes elsewhere.
                let _ = old.tx.send(Outbound::Drop);
            }
            for (_, frame) in session.buffer.iter().filter(|(s, _)| *s > seq) {
                let _ = self.tx.send(Outbound::Frame(frame.clone()));
            }
            session.conn = Some(Attachment {
                conn_id: self.id,
                tx: self.tx.clone(),
            });
            session.disconnected_at = None;
            session.zombie = false;
            session.resumes += 1;
            let shard = session.shard;
            let replayed = session.seq - seq;
            st.counters.resumes += 1;
            st.dispatch_to(
                session_id,
                "RESUMED",
                &json!({"_trace": ["guildshard-emulator"]}),
            );
            tracing::info!(replayed, "resumed");
            Ok(shard)
        }
    }

    /// The connection is gone: the session stays resumable unless the client closed with
    /// 1000/1001 (which invalidates it, as on Discord), we closed with a code that ends the
    /// session (4007, 4009, the fatal ones), or it was already made unresumable.
    fn detach(&self, end: &End) {
        let Some(sid) = &self.session else { return };
        let mut st = self.emu.lock();
        let invalidate = match end {
            End::ClientGone(Some(1000 | 1001)) => true,
            End::Closed(code) => resume::close_ends_session(*code),
            End::ClientGone(_) | End::Dropped => false,
        };
        let Some(session) = st.sessions.get(sid) else {
            return;
        };
        let mine = session.conn.as_ref().is_some_and(|c| c.conn_id == self.id);
        if !mine {
            return;
        }
        if invalidate || !session.resumable {
            st.sessions.remove(sid);
            tracing::info!("connection ended the session; it cannot be resumed");
        } else if let Some(s) = st.sessions.get_mut(sid) {
            s.conn = None;
            s.disconnected_at = Some(Instant::now());
            tracing::info!(seq = s.seq, "disconnected; session resumable");
        }
    }
}

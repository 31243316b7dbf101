//! Emulator fidelity: every frame it emits deserializes as the intended serenity type, an
//! unmodified serenity `Client` runs against it (READY, GUILD_CREATE, messages, posting,
//! RECONNECT/resume, INVALID_SESSION, zombie), Discord's shard routing, close codes, signed
//! interactions with the 3 s deadline, nonce dedupe, rate limits, traffic determinism and the
//! CLI. Everything binds 127.0.0.1:0 and is bounded in time. Resume, takeover and the session
//! control API are in [`resume`]; the REST reads in [`rest_reads`].

mod rest_reads;
mod resume;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use serenity::model::event::{Event, GatewayEvent};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use guildshard::emulator::{
    self, CommandKind, Emulator, EmulatorConfig, EventKind, InteractionOutcome, RunCommand,
    TrafficRequest,
};
use guildshard::shutdown::Shutdown;

use crate::support::eventually::{eventually, eventually_within};

/// A running emulator that shuts down on drop.
struct Running {
    emu: Emulator,
    shutdown: Shutdown,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

async fn start(cfg: EmulatorConfig) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let shutdown = Shutdown::new();
    let emu = emulator::start(cfg, listener, shutdown.clone())
        .await
        .expect("emulator starts");
    Running { emu, shutdown }
}

fn small(guilds: usize) -> EmulatorConfig {
    EmulatorConfig {
        guilds,
        members_per_guild: 6,
        ..EmulatorConfig::default()
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw gateway client: every text frame it receives is kept, in order.
struct RawClient {
    frames: Arc<Mutex<Vec<Value>>>,
    close_code: Arc<Mutex<Option<u16>>>,
    /// Set once the connection is over, however it ended (close frame, drop, error).
    ended: Arc<AtomicBool>,
    out: tokio::sync::mpsc::UnboundedSender<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect(emu: &Emulator) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("{}/?v=10", emu.gateway_url()))
        .await
        .expect("websocket connects");
    ws
}

fn raw(ws: Ws) -> RawClient {
    let frames = Arc::new(Mutex::new(Vec::new()));
    let close_code = Arc::new(Mutex::new(None));
    let ended = Arc::new(AtomicBool::new(false));
    let (out, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (f, c, e) = (frames.clone(), close_code.clone(), ended.clone());
    let task = tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(Ok(WsMessage::Text(t))) => {
                        f.lock().expect("test lock").push(serde_json::from_str(&t).expect("frames are json"));
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        *c.lock().expect("test lock") = Some(frame.map_or(1005, |f| u16::from(f.code)));
                        break;
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
                send = rx.recv() => match send {
                    Some(text) => { let _ = sink.send(WsMessage::Text(text)).await; }
                    None => break,
                },
            }
        }
        e.store(true, Ordering::SeqCst);
    });
    RawClient {
        frames,
        close_code,
        ended,
        out,
        task,
    }
}

impl RawClient {
    fn send(&self, v: Value) {
        self.out.send(v.to_string()).expect("client task alive");
    }

    fn identify(&self, token: &str, shard: [u32; 2], intents: u64) {
        self.send(
            json!({"op": 2, "d": {"token": token, "intents": intents, "shard": shard,
            "properties": {"os": "linux", "browser": "test", "device": "test"}}}),
        );
    }

    fn frames(&self) -> Vec<Value> {
        self.frames.lock().expect("test lock").clone()
    }

    fn dispatches(&self, t: &str) -> Vec<Value> {
        self.frames()
            .into_iter()
            .filter(|f| f["t"] == t)
            .map(|f| f["d"].clone())
            .collect()
    }

    fn last_seq(&self) -> u64 {
        self.frames()
            .iter()
            .filter_map(|f| f["s"].as_u64())
            .max()
            .unwrap_or(0)
    }

    fn session_id(&self) -> Option<String> {
        self.dispatches("READY")
            .first()
            .and_then(|d| d["session_id"].as_str().map(str::to_owned))
    }

    /// RESUME with the raw token (as serenity and twilight send it).
    fn resume(&self, token: &str, session_id: &str, seq: u64) {
        self.send(json!({"op": 6, "d": {"token": token, "session_id": session_id, "seq": seq}}));
    }

    /// The `d` of the first op 9 INVALID_SESSION received, once one arrives.
    async fn wait_invalid_session(&self) -> Value {
        eventually("INVALID_SESSION", || {
            let d = self
                .frames()
                .into_iter()
                .find(|f| f["op"] == 9)
                .map(|f| f["d"].clone());
            async move { d }
        })
        .await
    }

    /// Waits for RESUMED and returns every dispatch received so far, in order.
    async fn wait_resumed(&self) -> Vec<Value> {
        eventually("RESUMED", || {
            let frames = self.frames();
            let done = frames.iter().any(|f| f["t"] == "RESUMED");
            async move { done.then(|| frames.into_iter().filter(|f| f["op"] == 0).collect()) }
        })
        .await
    }

    async fn wait_ended(&self) {
        let ended = self.ended.clone();
        eventually("the connection to end", || {
            let done = ended.load(Ordering::SeqCst);
            async move { done.then_some(()) }
        })
        .await;
    }

    async fn wait_close(&self) -> u16 {
        let code = self.close_code.clone();
        eventually("a close frame", || {
            let code = *code.lock().expect("test lock");
            async move { code }
        })
        .await
    }
}

const ALL_INTENTS: u64 = 0x1_FFFF | (1 << 20) | (1 << 21) | (1 << 24) | (1 << 25);

async fn identified(emu: &Emulator, shard: [u32; 2]) -> RawClient {
    let client = raw(connect(emu).await);
    client.identify(&emu.application().token, shard, ALL_INTENTS);
    let c = &client;
    eventually("READY", || async move { c.session_id() }).await;
    client
}

/// Every frame kind the emulator emits deserializes as serenity's intended type.
#[tokio::test]
async fn every_frame_deserializes_as_serenity_expects() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let r = start(small(4)).await;
        let emu = &r.emu;
        let client = identified(emu, [0, 1]).await;
        let g = emu.guilds()[0].clone();
        let (owner, member) = (g.owner_id, g.members[1]);
        let channel = g.channels[0];
        let m1 = emu.post_message(channel, member, "hello <@1>").expect("post");
        let m2 = emu.post_message(channel, member, "second").expect("post");
        let m3 = emu.post_message(channel, member, "third").expect("post");
        emu.edit_message(channel, m1.id, "edited").expect("edit");
        emu.delete_message(channel, m1.id).expect("delete");
        emu.bulk_delete(channel, &[m2.id, m3.id]).expect("bulk");
        let joined = emu.add_member(g.id, None).expect("join");
        emu.timeout(g.id, joined.id, owner, Some(4_102_444_800_000), Some("calm")).expect("timeout");
        emu.remove_member(g.id, joined.id).expect("leave");
        emu.ban(g.id, member, owner, Some("spam")).expect("ban");
        emu.unban(g.id, member, owner, None).expect("unban");
        emu.send_dm(g.members[2], "hi bot").expect("dm");
        emu.create_channel(g.id, "new-channel").expect("channel");
        emu.create_guild("Brand New", 3, 2);
        let sid = client.session_id().expect("session");
        emu.request_heartbeat(&sid).expect("heartbeat request");
        client.send(json!({"op": 1, "d": client.last_seq()}));
        emu.reconnect(&sid).expect("reconnect");
        let c = &client;
        eventually("RECONNECT and ACK", || async move {
            let f = c.frames();
            (f.iter().any(|f| f["op"] == 7) && f.iter().any(|f| f["op"] == 11) && f.iter().any(|f| f["op"] == 1)).then_some(())
        })
        .await;
        // Resume on a fresh connection from an older seq: missed events replay, then RESUMED.
        let resumed = raw(connect(emu).await);
        resumed.send(json!({"op": 6, "d": {"token": format!("Bot {}", emu.application().token), "session_id": sid, "seq": 3}}));
        let rc = &resumed;
        eventually("RESUMED", || async move { (!rc.dispatches("RESUMED").is_empty()).then_some(()) }).await;
        let replayed: Vec<u64> = resumed.frames().iter().filter_map(|f| f["s"].as_u64()).collect();
        assert_eq!(replayed.first(), Some(&4), "replay starts after the resumed seq");
        assert!(replayed.windows(2).all(|w| w[1] == w[0] + 1), "replayed seqs are contiguous: {replayed:?}");
        emu.invalidate_session(&sid, true).expect("invalidate");
        eventually("INVALID_SESSION", || async move { rc.frames().iter().any(|f| f["op"] == 9).then_some(()) }).await;

        let mut kinds = BTreeSet::new();
        for frame in client.frames().into_iter().chain(resumed.frames()) {
            let text = frame.to_string();
            let event: GatewayEvent = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            match event {
                GatewayEvent::Dispatch(_, Event::Unknown(u)) => panic!("Event::Unknown for {}: {text}", u.kind),
                GatewayEvent::Dispatch(_, ev) => {
                    kinds.insert(ev.name().unwrap_or_default());
                }
                GatewayEvent::Hello(interval) => assert_eq!(interval, 41_250),
                GatewayEvent::InvalidateSession(resumable) => assert!(resumable),
                _ => {}
            }
        }
        for expected in [
            "READY", "GUILD_CREATE", "MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE", "MESSAGE_DELETE_BULK",
            "GUILD_MEMBER_ADD", "GUILD_MEMBER_UPDATE", "GUILD_MEMBER_REMOVE", "GUILD_BAN_ADD", "GUILD_BAN_REMOVE",
            "GUILD_AUDIT_LOG_ENTRY_CREATE", "CHANNEL_CREATE", "RESUMED",
        ] {
            assert!(kinds.contains(expected), "no {expected} among {kinds:?}");
        }
        // The audit entries carry what the bot keys mod actions on.
        let audits = client.dispatches("GUILD_AUDIT_LOG_ENTRY_CREATE");
        let types: Vec<u64> = audits.iter().filter_map(|a| a["action_type"].as_u64()).collect();
        assert_eq!(types, vec![24, 22, 23]);
        assert_eq!(audits[0]["changes"][0]["key"], "communication_disabled_until");
        assert_eq!(audits[1]["reason"], "spam");
        assert_eq!(audits[1]["user_id"], owner.to_string());
        let dm = client.dispatches("MESSAGE_CREATE").into_iter().find(|m| m["content"] == "hi bot").expect("dm");
        assert!(dm.get("guild_id").is_none());
    })
    .await
    .expect("test finished in time");
}

mod bot {
    use super::*;
    use serenity::all::{
        ChannelId, Context, EventHandler, GatewayIntents, Guild, HttpBuilder, Message, Ready,
        ResumedEvent,
    };

    #[derive(Default)]
    pub(super) struct Seen {
        pub(super) readies: Vec<String>,
        pub(super) guilds: HashSet<u64>,
        pub(super) messages: Vec<String>,
        pub(super) resumes: usize,
    }

    pub(super) struct Handler(pub(super) Arc<Mutex<Seen>>);

    #[serenity::async_trait]
    impl EventHandler for Handler {
        async fn ready(&self, _: Context, ready: Ready) {
            self.0
                .lock()
                .expect("test lock")
                .readies
                .push(ready.session_id);
        }
        async fn guild_create(&self, _: Context, guild: Guild, _: Option<bool>) {
            self.0
                .lock()
                .expect("test lock")
                .guilds
                .insert(guild.id.get());
        }
        async fn message(&self, _: Context, m: Message) {
            self.0.lock().expect("test lock").messages.push(m.content);
        }
        async fn resume(&self, _: Context, _: ResumedEvent) {
            self.0.lock().expect("test lock").resumes += 1;
        }
    }

    /// Starts one serenity client on `shard` (one Client per shard avoids serenity's 5 s
    /// queuer gap). Returns what it saw, its REST handle and the task (abort to stop).
    pub(super) async fn client(
        emu: &Emulator,
        shard: (u32, u32),
    ) -> (
        Arc<Mutex<Seen>>,
        Arc<serenity::http::Http>,
        tokio::task::JoinHandle<()>,
    ) {
        let http = HttpBuilder::new(emu.application().token)
            .proxy(emu.api_base())
            .ratelimiter_disabled(true)
            .build();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let intents = GatewayIntents::non_privileged()
            | GatewayIntents::MESSAGE_CONTENT
            | GatewayIntents::GUILD_MEMBERS;
        let mut client = serenity::client::ClientBuilder::new_with_http(http, intents)
            .event_handler(Handler(seen.clone()))
            .await
            .expect("client builds");
        let http = client.http.clone();
        let task = tokio::spawn(async move {
            let _ = client.start_shard(shard.0, shard.1).await;
        });
        (seen, http, task)
    }

    pub(super) async fn post(
        emu: &Emulator,
        channel: u64,
        author: u64,
        n: usize,
        tag: &str,
    ) -> Vec<String> {
        let mut sent = Vec::new();
        for i in 0..n {
            let content = format!("{tag}-{i}");
            emu.post_message(channel, author, &content).expect("post");
            sent.push(content);
        }
        sent
    }

    pub(super) async fn wait_messages(seen: &Arc<Mutex<Seen>>, expected: &[String], what: &str) {
        eventually(what, || {
            let seen = seen.clone();
            let expected = expected.to_vec();
            async move {
                let got: HashSet<String> = seen
                    .lock()
                    .expect("test lock")
                    .messages
                    .iter()
                    .cloned()
                    .collect();
                expected.iter().all(|e| got.contains(e)).then_some(())
            }
        })
        .await;
    }

    pub(super) fn channel(id: u64) -> ChannelId {
        ChannelId::new(id)
    }
}

/// An unmodified serenity client: READY, GUILD_CREATEs, messages, posting, RECONNECT with no
/// event lost, INVALID_SESSION and a zombied connection.
#[tokio::test]
async fn serenity_client_survives_reconnect_invalid_session_and_zombie() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let r = start(EmulatorConfig {
            heartbeat_interval_ms: 500,
            identify_window_ms: 0,
            ..small(5)
        })
        .await;
        let emu = &r.emu;
        let (seen, http, task) = bot::client(emu, (0, 1)).await;
        let s = seen.clone();
        eventually("READY and every GUILD_CREATE", || {
            let s = s.clone();
            async move {
                let s = s.lock().expect("test lock");
                (s.readies.len() == 1 && s.guilds.len() == 5).then_some(())
            }
        })
        .await;
        let g = emu.guilds()[0].clone();
        let (channel, author) = (g.channels[0], g.members[1]);
        let sent = bot::post(emu, channel, author, 5, "first").await;
        bot::wait_messages(&seen, &sent, "the first messages").await;

        bot::channel(channel)
            .say(&http, "hello from serenity")
            .await
            .expect("say works");
        assert!(emu
            .bot_messages(channel)
            .expect("channel")
            .iter()
            .any(|m| m.content == "hello from serenity"));

        // RECONNECT: serenity resumes; messages posted meanwhile are replayed, none lost.
        let sid = emu.sessions()[0].session_id.clone();
        emu.reconnect(&sid).expect("reconnect");
        let during = bot::post(emu, channel, author, 20, "during-reconnect").await;
        bot::wait_messages(&seen, &during, "messages across the reconnect").await;
        let s = seen.clone();
        eventually("a RESUMED", || {
            let s = s.clone();
            async move { (s.lock().expect("test lock").resumes >= 1).then_some(()) }
        })
        .await;
        assert_eq!(
            emu.counters().identifies,
            1,
            "a reconnect resumes, it does not identify"
        );
        {
            let s = seen.lock().expect("test lock");
            let unique: HashSet<&String> = s.messages.iter().collect();
            assert_eq!(unique.len(), s.messages.len(), "no message delivered twice");
        }

        // INVALID_SESSION (not resumable): serenity identifies again.
        let sid = emu
            .sessions()
            .into_iter()
            .find(|s| s.state == "connected")
            .expect("connected")
            .session_id;
        emu.invalidate_session(&sid, false).expect("invalidate");
        let s = seen.clone();
        eventually("a second READY after INVALID_SESSION", || {
            let s = s.clone();
            async move { (s.lock().expect("test lock").readies.len() >= 2).then_some(()) }
        })
        .await;
        let after = bot::post(emu, channel, author, 3, "after-invalid").await;
        bot::wait_messages(&seen, &after, "messages after re-identify").await;

        // Zombie: heartbeats stop being acknowledged; serenity reconnects with a new session.
        let sid = emu
            .sessions()
            .into_iter()
            .find(|s| s.state == "connected")
            .expect("connected")
            .session_id;
        emu.zombie(&sid).expect("zombie");
        let s = seen.clone();
        eventually("a third READY after the zombied connection", || {
            let s = s.clone();
            async move { (s.lock().expect("test lock").readies.len() >= 3).then_some(()) }
        })
        .await;
        let last = bot::post(emu, channel, author, 3, "after-zombie").await;
        bot::wait_messages(&seen, &last, "messages after the zombie restart").await;
        task.abort();
    })
    .await
    .expect("test finished in time");
}

/// Discord's routing: `[i,3]` sessions get exactly their guilds' events (DMs to shard 0), and
/// three `[0,1]` sessions each get everything.
#[tokio::test]
async fn shard_routing_matches_discord() {
    tokio::time::timeout(Duration::from_secs(40), async {
        let r = start(EmulatorConfig {
            identify_window_ms: 0,
            max_concurrency: 16,
            ..small(30)
        })
        .await;
        let emu = &r.emu;
        let mut clients = Vec::new();
        for shard in [[0, 3], [1, 3], [2, 3], [0, 1], [0, 1], [0, 1]] {
            clients.push((shard, identified(emu, shard).await));
        }
        emu.start_traffic(TrafficRequest {
            rate: 2000.0,
            count: Some(400),
            duration_ms: None,
            seed: Some(9),
        })
        .expect("traffic starts");
        eventually("the generator to finish", || async {
            (!emu.traffic_status().running).then_some(())
        })
        .await;
        let log = emu.traffic_log();
        assert_eq!(log.len(), 400);
        // Wait until every client has read up to its session's last seq.
        for (_, client) in &clients {
            let sid = client.session_id().expect("session");
            eventually("a client to catch up", || {
                let target = emu
                    .sessions()
                    .into_iter()
                    .find(|s| s.session_id == sid)
                    .map(|s| s.seq);
                let got = client.last_seq();
                async move { (target == Some(got)).then_some(()) }
            })
            .await;
        }
        let created = |shard: [u32; 2]| -> BTreeSet<u64> {
            log.iter()
                .filter(|e| matches!(e.kind, EventKind::MessageCreate | EventKind::DirectMessage))
                .filter(|e| match e.guild_id {
                    Some(g) => (g >> 22) % u64::from(shard[1]) == u64::from(shard[0]),
                    None => shard[0] == 0,
                })
                .filter_map(|e| e.message_id)
                .collect()
        };
        let all = created([0, 1]);
        for (shard, client) in &clients {
            let got: BTreeSet<u64> = client
                .dispatches("MESSAGE_CREATE")
                .iter()
                .filter_map(|m| m["id"].as_str()?.parse().ok())
                .collect();
            assert_eq!(
                got,
                created(*shard),
                "shard {shard:?} got exactly its messages"
            );
            for frame in client.frames().iter().filter(|f| f["op"] == 0) {
                let d = &frame["d"];
                let guild = if frame["t"] == "GUILD_CREATE" {
                    &d["id"]
                } else {
                    &d["guild_id"]
                };
                if let Some(g) = guild.as_str().and_then(|g| g.parse::<u64>().ok()) {
                    assert_eq!(
                        (g >> 22) % u64::from(shard[1]),
                        u64::from(shard[0]),
                        "{} for a foreign guild",
                        frame["t"]
                    );
                }
            }
            if shard[1] == 1 {
                assert_eq!(got, all);
            }
        }
        let sharded: usize = (0..3).map(|i| created([i, 3]).len()).sum();
        assert_eq!(
            sharded,
            all.len(),
            "every message reached exactly one of the three shards"
        );
    })
    .await
    .expect("test finished in time");
}

/// Close codes: bad token 4004, malformed frame 4002, unknown opcode 4001, payload before
/// IDENTIFY 4003, a second IDENTIFY 4005, a disallowed privileged intent 4014.
#[tokio::test]
async fn close_codes_follow_the_docs() {
    tokio::time::timeout(Duration::from_secs(20), async {
        let r = start(EmulatorConfig {
            allowed_intents: 0x1_FFFF & !(1 << 15),
            identify_window_ms: 0,
            ..small(2)
        })
        .await;
        let emu = &r.emu;
        let bad = raw(connect(emu).await);
        bad.identify("not-the-token", [0, 1], 1);
        assert_eq!(bad.wait_close().await, 4004);

        let c = raw(connect(emu).await);
        c.out.send("{not json".into()).expect("send");
        assert_eq!(c.wait_close().await, 4002);

        let c = raw(connect(emu).await);
        c.send(json!({"op": 99, "d": null}));
        assert_eq!(c.wait_close().await, 4001);

        let c = raw(connect(emu).await);
        c.send(json!({"op": 3, "d": {"status": "online", "since": null, "activities": [], "afk": false}}));
        assert_eq!(c.wait_close().await, 4003);

        let c = raw(connect(emu).await);
        c.identify(&format!("Bot {}", emu.application().token), [0, 1], 1 << 15);
        assert_eq!(c.wait_close().await, 4014);

        let c = raw(connect(emu).await);
        c.identify(&emu.application().token, [0, 1], 1);
        let rc = &c;
        eventually("READY", || async move { rc.session_id() }).await;
        c.identify(&emu.application().token, [0, 1], 1);
        assert_eq!(c.wait_close().await, 4005);
    })
    .await
    .expect("test finished in time");
}

/// (signature hex, timestamp, raw body) of each request the endpoint received.
type Captured = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A throwaway interactions endpoint that verifies Discord's signature and answers per command.
async fn interactions_endpoint(public_key_hex: String) -> (String, Captured) {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    let seen: Captured = Arc::default();
    let key_bytes: [u8; 32] = hex::decode(public_key_hex)
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let key = VerifyingKey::from_bytes(&key_bytes).expect("public key");
    let record = seen.clone();
    let handler = move |headers: HeaderMap, body: Bytes| {
        let record = record.clone();
        async move {
            let sig = headers["x-signature-ed25519"]
                .to_str()
                .expect("sig")
                .to_owned();
            let ts = headers["x-signature-timestamp"]
                .to_str()
                .expect("ts")
                .to_owned();
            record
                .lock()
                .expect("test lock")
                .push((sig.clone(), ts.clone(), body.to_vec()));
            let signature = Signature::from_bytes(
                &hex::decode(&sig)
                    .expect("hex")
                    .try_into()
                    .expect("64 bytes"),
            );
            let mut message = ts.into_bytes();
            message.extend_from_slice(&body);
            if key.verify(&message, &signature).is_err() {
                return StatusCode::UNAUTHORIZED.into_response();
            }
            let v: Value = serde_json::from_slice(&body).expect("json body");
            if v["type"] == 1 {
                return axum::Json(json!({"type": 1})).into_response();
            }
            match v["data"]["name"].as_str() {
                Some("hang") => {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    axum::Json(json!({"type": 4, "data": {"content": "too late"}})).into_response()
                }
                Some("slow") => axum::Json(json!({"type": 5})).into_response(),
                Some("Report message") => {
                    let target = v["data"]["target_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    axum::Json(json!({"type": 4, "data": {"content": format!("reported {target}"), "flags": 64}})).into_response()
                }
                _ => axum::Json(json!({"type": 4, "data": {"content": "pong"}})).into_response(),
            }
        }
    };
    let app = axum::Router::new().route("/interactions", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/interactions",
        listener.local_addr().expect("addr")
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

/// Interactions are signed as Discord signs them, the response is recorded, defers are
/// finished through the webhook routes, and the deadline is enforced.
#[tokio::test]
async fn interactions_are_signed_delivered_and_recorded() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let r = start(EmulatorConfig {
            interaction_deadline_ms: 800,
            ..small(2)
        })
        .await;
        let emu = &r.emu;
        let app = emu.application();
        let (url, seen) = interactions_endpoint(app.public_key_hex.clone()).await;
        emu.set_interactions_url(Some(url));
        let ping = emu.ping_interactions().await.expect("ping");
        assert_eq!(
            ping.outcome,
            InteractionOutcome::Responded { response_type: 1 }
        );

        let g = emu.guilds()[0].clone();
        let user = g.members[1];
        let rec = emu
            .run_command(RunCommand {
                name: "stats".into(),
                kind: CommandKind::ChatInput,
                guild_id: Some(g.id),
                channel_id: None,
                user_id: user,
                options: vec![],
                target_id: None,
            })
            .await
            .expect("command runs");
        assert_eq!(
            rec.outcome,
            InteractionOutcome::Responded { response_type: 4 }
        );
        assert_eq!(rec.original.as_ref().expect("original")["content"], "pong");
        assert!(rec.payload["member"]["permissions"].is_string());
        assert_eq!(rec.payload["guild_id"], g.id.to_string());
        assert!(emu
            .bot_messages(g.channels[0])
            .expect("channel")
            .iter()
            .any(|m| m.content == "pong"));

        // The signature verifies over timestamp + body, and fails once the body is tampered.
        let (sig, ts, body) = seen
            .lock()
            .expect("test lock")
            .last()
            .cloned()
            .expect("a request");
        let key = VerifyingKey::from_bytes(
            &hex::decode(&app.public_key_hex)
                .expect("hex")
                .try_into()
                .expect("32"),
        )
        .expect("key");
        let signature =
            Signature::from_bytes(&hex::decode(&sig).expect("hex").try_into().expect("64"));
        let mut message = ts.clone().into_bytes();
        message.extend_from_slice(&body);
        assert!(key.verify(&message, &signature).is_ok());
        let mut tampered = ts.into_bytes();
        tampered.extend_from_slice(&body);
        let last = tampered.len() - 2;
        tampered[last] ^= 1;
        assert!(key.verify(&tampered, &signature).is_err());

        // A message context-menu command carries the target in data.resolved.
        let target = emu
            .post_message(g.channels[0], user, "bad words")
            .expect("post");
        let rec = emu
            .run_command(RunCommand {
                name: "Report message".into(),
                kind: CommandKind::Message,
                guild_id: Some(g.id),
                channel_id: Some(g.channels[0]),
                user_id: g.owner_id,
                options: vec![],
                target_id: Some(target.id),
            })
            .await
            .expect("context menu runs");
        assert_eq!(rec.payload["data"]["type"], 3);
        assert_eq!(
            rec.payload["data"]["resolved"]["messages"][target.id.to_string()]["content"],
            "bad words"
        );
        assert!(rec.is_ephemeral());

        // Defer, then edit @original and post a follow-up through the webhook routes.
        let rec = emu
            .run_command(RunCommand {
                name: "slow".into(),
                kind: CommandKind::ChatInput,
                guild_id: None,
                channel_id: None,
                user_id: user,
                options: vec![],
                target_id: None,
            })
            .await
            .expect("slow runs");
        assert_eq!(
            rec.outcome,
            InteractionOutcome::Responded { response_type: 5 }
        );
        assert!(rec.payload.get("user").is_some() && rec.payload.get("member").is_none());
        let http = reqwest::Client::new();
        let base = format!(
            "{}/api/v10/webhooks/{}/{}",
            emu.api_base(),
            app.id,
            rec.token
        );
        let edited = http
            .patch(format!("{base}/messages/@original"))
            .json(&json!({"content": "done"}))
            .send()
            .await
            .expect("patch");
        assert_eq!(edited.status(), 200);
        let follow = http
            .post(&base)
            .json(&json!({"content": "more"}))
            .send()
            .await
            .expect("followup");
        assert_eq!(follow.status(), 200);
        let rec = emu.interaction(rec.id).expect("record");
        assert_eq!(rec.edits.len(), 1);
        assert_eq!(rec.followups.len(), 1);
        assert_eq!(rec.reply_count(), 2);
        assert_eq!(emu.bot_dms(user).expect("dms").len(), 2);

        // A second initial response is refused as Discord refuses it.
        let again = http
            .post(format!(
                "{}/api/v10/interactions/{}/{}/callback",
                emu.api_base(),
                rec.id,
                rec.token
            ))
            .json(&json!({"type": 4, "data": {"content": "x"}}))
            .send()
            .await
            .expect("callback");
        assert_eq!(again.status(), 400);
        assert_eq!(again.json::<Value>().await.expect("json")["code"], 40060);

        // No answer within the deadline: the interaction failed.
        let rec = emu
            .run_command(RunCommand {
                name: "hang".into(),
                kind: CommandKind::ChatInput,
                guild_id: Some(g.id),
                channel_id: None,
                user_id: user,
                options: vec![],
                target_id: None,
            })
            .await
            .expect("hang runs");
        assert!(
            matches!(rec.outcome, InteractionOutcome::Failed { .. }),
            "{:?}",
            rec.outcome
        );
    })
    .await
    .expect("test finished in time");
}

/// REST: auth, Discord error bodies, `?&` queries, nonce dedupe, rate-limit headers and 429.
#[tokio::test]
async fn rest_auth_errors_nonce_and_rate_limits() {
    tokio::time::timeout(Duration::from_secs(20), async {
        let r = start(small(2)).await;
        let emu = &r.emu;
        let http = reqwest::Client::new();
        let api = format!("{}/api/v10", emu.api_base());
        let auth = format!("Bot {}", emu.application().token);
        let channel = emu.guilds()[0].channels[0];

        let unauth = http
            .get(format!("{api}/users/@me"))
            .send()
            .await
            .expect("request");
        assert_eq!(unauth.status(), 401);
        assert_eq!(
            unauth.json::<Value>().await.expect("json"),
            json!({"code": 0, "message": "401: Unauthorized"})
        );

        let unknown = http
            .get(format!("{api}/channels/123"))
            .header("authorization", &auth)
            .send()
            .await
            .expect("request");
        assert_eq!(unknown.status(), 404);
        assert_eq!(unknown.json::<Value>().await.expect("json")["code"], 10003);

        let gw: Value = http
            .get(format!("{api}/gateway/bot"))
            .header("authorization", &auth)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json");
        assert_eq!(gw["session_start_limit"]["remaining"], 1000);
        assert_eq!(gw["url"], emu.gateway_url());

        let body = json!({"content": "once", "nonce": "abc-1", "enforce_nonce": true});
        let a: Value = http
            .post(format!("{api}/channels/{channel}/messages"))
            .header("authorization", &auth)
            .json(&body)
            .send()
            .await
            .expect("post")
            .json()
            .await
            .expect("json");
        let b = http
            .post(format!("{api}/channels/{channel}/messages"))
            .header("authorization", &auth)
            .json(&body)
            .send()
            .await
            .expect("post");
        assert!(b.headers().contains_key("x-ratelimit-limit"));
        let b: Value = b.json().await.expect("json");
        assert_eq!(
            a["id"], b["id"],
            "a repeated nonce returns the first message"
        );
        assert_eq!(emu.bot_messages(channel).expect("channel").len(), 1);

        let listed: Value = http
            .get(format!("{api}/channels/{channel}/messages?&limit=1"))
            .header("authorization", &auth)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(listed.as_array().map(Vec::len), Some(1));

        let limited = start(EmulatorConfig {
            rest_rate_limit: Some(2),
            ..small(1)
        })
        .await;
        let api = format!("{}/api/v10", limited.emu.api_base());
        let mut statuses = Vec::new();
        let mut retry = None;
        for _ in 0..6 {
            let resp = http
                .get(format!("{api}/users/@me"))
                .header("authorization", &auth)
                .send()
                .await
                .expect("get");
            statuses.push(resp.status().as_u16());
            if resp.status() == 429 {
                retry = resp.json::<Value>().await.expect("json")["retry_after"].as_f64();
            }
        }
        assert!(statuses.contains(&429), "{statuses:?}");
        assert!(retry.is_some_and(|r| r <= 1.0));
    })
    .await
    .expect("test finished in time");
}

/// The control API starts the generator; the same seed gives the same sequence.
#[tokio::test]
async fn traffic_over_the_control_api_is_deterministic() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let http = reqwest::Client::new();
        let mut runs = Vec::new();
        for _ in 0..2 {
            let r = start(small(12)).await;
            let base = format!("{}/control/v1", r.emu.api_base());
            let resp = http
                .post(format!("{base}/traffic"))
                .json(&json!({"rate": 2000.0, "count": 300, "seed": 4}))
                .send()
                .await
                .expect("start");
            assert_eq!(resp.status(), 202);
            eventually_within(Duration::from_secs(20), "the generator to finish", || {
                let http = http.clone();
                let url = format!("{base}/traffic");
                async move {
                    let status: Value = http.get(url).send().await.ok()?.json().await.ok()?;
                    (status["running"] == false && status["emitted"] == 300).then_some(())
                }
            })
            .await;
            let log: Vec<Value> = http
                .get(format!("{base}/traffic/log"))
                .send()
                .await
                .expect("log")
                .json()
                .await
                .expect("json");
            let shape: Vec<(Value, Value, Value)> = log
                .iter()
                .map(|e| {
                    (
                        e["kind"].clone(),
                        e["guild_id"].clone(),
                        e["user_id"].clone(),
                    )
                })
                .collect();
            runs.push(shape);
        }
        assert_eq!(runs[0].len(), 300);
        assert_eq!(runs[0], runs[1]);
    })
    .await
    .expect("test finished in time");
}

/// `guildshard emulator --port 0 --guilds 100` prints where it listens and serves REST.
#[tokio::test]
async fn cli_prints_its_address_and_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut proc = crate::support::process::Proc::spawn(
        "emulator",
        &["emulator", "--port", "0", "--guilds", "100", "--rate", "20"],
        &Default::default(),
        dir.path(),
    );
    let addr = proc.listening("emulator").await;
    assert!(addr.ip().is_loopback());
    let gw: Value = reqwest::get(format!("http://{addr}/api/v10/gateway"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(gw["url"], format!("ws://{addr}"));
    let guilds: Vec<Value> = reqwest::get(format!("http://{addr}/control/v1/guilds"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(guilds.len(), 100);
    assert_eq!(proc.terminate(Duration::from_secs(10)).await, Some(0));
}

/// Every REST answer a bot reads at start parses with serenity's own client (a field serenity
/// requires, such as a non-zero owner id, would otherwise fail only in a real pod).
#[tokio::test]
async fn serenity_http_parses_every_startup_answer() {
    let run = start(small(3)).await;
    let http = serenity::http::HttpBuilder::new(run.emu.application().token)
        .proxy(run.emu.api_base())
        .ratelimiter_disabled(true)
        .build();
    let app = http
        .get_current_application_info()
        .await
        .expect("application info parses");
    assert_eq!(app.id.get(), run.emu.application().id);
    http.set_application_id(app.id);
    let me = http.get_current_user().await.expect("current user parses");
    assert!(me.bot);
    let bot = http.get_bot_gateway().await.expect("gateway/bot parses");
    assert!(bot.shards >= 1);
    let commands = serde_json::Value::Array(guildshard::commands::definitions());
    let registered = http
        .create_global_commands(&commands)
        .await
        .expect("bulk overwrite parses");
    assert_eq!(registered.len(), 5);
}

/// Past 2500 guilds a shard is refused with 4011 (sharding required), and `GET /gateway/bot`
/// recommends enough shards (one per 1000 guilds) that a client following it is never refused.
#[tokio::test]
async fn recommends_enough_shards_and_refuses_an_overloaded_one() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let r = start(EmulatorConfig {
            guilds: 2501,
            members_per_guild: 1,
            channels_per_guild: 3,
            identify_window_ms: 0,
            ..EmulatorConfig::default()
        })
        .await;
        let emu = &r.emu;
        let http = serenity::http::HttpBuilder::new(emu.application().token)
            .proxy(emu.api_base())
            .ratelimiter_disabled(true)
            .build();
        let bot = http.get_bot_gateway().await.expect("gateway/bot parses");
        assert_eq!(bot.shards, 3, "ceil(2501 / 1000)");

        let one = raw(connect(emu).await);
        one.identify(&emu.application().token, [0, 1], 1);
        assert_eq!(one.wait_close().await, 4011);

        let recommended = raw(connect(emu).await);
        recommended.identify(&emu.application().token, [0, bot.shards], 1);
        let rc = &recommended;
        eventually("READY", || async move { rc.session_id() }).await;
    })
    .await
    .expect("test finished in time");
}

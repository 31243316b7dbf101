//! Resuming as Discord does it, seen by raw gateway clients: replay of exactly the missed
//! dispatches on another connection, takeover of a live session, RESUME on the same socket
//! after INVALID_SESSION `d: true`, sessions ended by 4009, the bounded and expiring resume
//! buffer, the session control API addressed by shard, and the counters that report it all.

use std::time::Duration;

use serde_json::{json, Value};

use super::{connect, identified, raw, small, start, RawClient};
use crate::support::eventually::eventually;
use guildshard::emulator::{Emulator, EmulatorConfig};

/// The session's last seq, as the emulator sees it.
fn seq_of(emu: &Emulator, sid: &str) -> Option<u64> {
    emu.sessions()
        .into_iter()
        .find(|s| s.session_id == sid)
        .map(|s| s.seq)
}

/// Waits until `client` has read every dispatch its session was sent.
async fn caught_up(emu: &Emulator, client: &RawClient, sid: &str) {
    eventually("the client to catch up", || {
        let done = seq_of(emu, sid) == Some(client.last_seq());
        async move { done.then_some(()) }
    })
    .await;
}

/// Waits until the emulator has noticed that the session's connection is gone.
async fn disconnected(emu: &Emulator, sid: &str) {
    eventually("the session to be disconnected", || {
        let done = emu
            .sessions()
            .iter()
            .any(|s| s.session_id == sid && s.state == "disconnected");
        async move { done.then_some(()) }
    })
    .await;
}

fn contents(dispatches: &[Value]) -> Vec<String> {
    dispatches
        .iter()
        .filter(|f| f["t"] == "MESSAGE_CREATE")
        .filter_map(|f| f["d"]["content"].as_str().map(str::to_owned))
        .collect()
}

fn seqs(dispatches: &[Value]) -> Vec<u64> {
    dispatches.iter().filter_map(|f| f["s"].as_u64()).collect()
}

/// A RESUME from a new connection (any process that kept `session_id` and `seq`) gets the
/// dispatches after `seq`, byte for byte as first sent, then RESUMED, then live traffic.
#[tokio::test]
async fn resume_elsewhere_replays_exactly_what_followed_seq_then_resumed() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let r = start(small(3)).await;
        let emu = &r.emu;
        let token = emu.application().token;
        let a = identified(emu, [0, 1]).await;
        let sid = a.session_id().expect("session");
        let g = emu.guilds()[0].clone();
        let (channel, author) = (g.channels[0], g.members[1]);
        for i in 0..4 {
            emu.post_message(channel, author, &format!("seen-{i}"))
                .expect("post");
        }
        caught_up(emu, &a, &sid).await;
        let seen = a.frames();
        let from = a.last_seq() - 2;
        drop(a);
        disconnected(emu, &sid).await;
        for i in 0..3 {
            emu.post_message(channel, author, &format!("missed-{i}"))
                .expect("post");
        }
        let end = seq_of(emu, &sid).expect("session kept");

        let b = raw(connect(emu).await);
        b.resume(&token, &sid, from);
        let got = b.wait_resumed().await;
        assert_eq!(seqs(&got), (from + 1..=end + 1).collect::<Vec<_>>());
        assert_eq!(got.last().map(|f| f["t"].clone()), Some(json!("RESUMED")));
        assert_eq!(
            contents(&got),
            ["seen-2", "seen-3", "missed-0", "missed-1", "missed-2"]
        );
        for frame in seen
            .iter()
            .filter(|f| f["s"].as_u64().is_some_and(|s| s > from))
        {
            assert!(got.contains(frame), "replayed as first sent: {frame}");
        }
        let others: Vec<Value> = b.frames().into_iter().filter(|f| f["op"] != 0).collect();
        assert_eq!(others.len(), 1, "only HELLO besides dispatches: {others:?}");
        assert_eq!(others[0]["op"], 10);

        emu.post_message(channel, author, "live").expect("post");
        let bc = &b;
        eventually("the live message", || async move {
            bc.frames()
                .iter()
                .find(|f| f["d"]["content"] == "live")
                .and_then(|f| f["s"].as_u64())
        })
        .await;
        assert_eq!(b.last_seq(), end + 2);
        assert_eq!(emu.counters().resumes, 1);
        assert_eq!(emu.counters().identifies, 1);
    })
    .await
    .expect("test finished in time");
}

/// A second connection resuming a live session takes it over: the old connection is dropped
/// and gets nothing more; the session lives on, connected to the new one.
#[tokio::test]
async fn resuming_a_live_session_takes_it_over() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let r = start(small(2)).await;
        let emu = &r.emu;
        let token = emu.application().token;
        let a = identified(emu, [0, 1]).await;
        let sid = a.session_id().expect("session");
        caught_up(emu, &a, &sid).await;

        let b = raw(connect(emu).await);
        b.resume(&token, &sid, a.last_seq());
        let got = b.wait_resumed().await;
        assert_eq!(got.len(), 1, "nothing was missed: {got:?}");
        a.wait_ended().await;

        let g = emu.guilds()[0].clone();
        emu.post_message(g.channels[0], g.members[1], "after takeover")
            .expect("post");
        let bc = &b;
        eventually("the new connection to get the message", || async move {
            bc.frames()
                .iter()
                .any(|f| f["d"]["content"] == "after takeover")
                .then_some(())
        })
        .await;
        assert!(!a
            .frames()
            .iter()
            .any(|f| f["d"]["content"] == "after takeover"));
        let sessions = emu.sessions();
        assert_eq!(sessions.len(), 1);
        assert_eq!(
            sessions[0].state, "connected",
            "the old socket's end did not detach it"
        );
        assert_eq!(sessions[0].resumes, 1);
    })
    .await
    .expect("test finished in time");
}

/// After op 9 `d: true` the socket is unauthenticated: no dispatches reach it, and a RESUME on
/// the same socket (as discord.js sends) replays what it missed instead of closing with 4005.
#[tokio::test]
async fn invalid_session_true_allows_resume_on_the_same_socket() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let r = start(small(2)).await;
        let emu = &r.emu;
        let token = emu.application().token;
        let a = identified(emu, [0, 1]).await;
        let sid = a.session_id().expect("session");
        caught_up(emu, &a, &sid).await;
        let seq = a.last_seq();

        emu.invalidate_session(&sid, true).expect("invalidate");
        assert_eq!(a.wait_invalid_session().await, json!(true));
        let g = emu.guilds()[0].clone();
        for i in 0..2 {
            emu.post_message(g.channels[0], g.members[1], &format!("while-invalid-{i}"))
                .expect("post");
        }
        assert_eq!(a.last_seq(), seq, "no dispatch after op 9");

        a.resume(&token, &sid, seq);
        let got = a.wait_resumed().await;
        let after: Vec<Value> = got
            .into_iter()
            .filter(|f| f["s"].as_u64().is_some_and(|s| s > seq))
            .collect();
        assert_eq!(seqs(&after), vec![seq + 1, seq + 2, seq + 3]);
        assert_eq!(contents(&after), ["while-invalid-0", "while-invalid-1"]);
        assert_eq!(after[2]["t"], "RESUMED");
        assert_eq!(*a.close_code.lock().expect("test lock"), None);
        assert_eq!(emu.sessions()[0].state, "connected");
    })
    .await
    .expect("test finished in time");
}

/// Close code 4009 means "start a new session": the session is gone and a RESUME gets
/// INVALID_SESSION `d: false`. A 4000 close keeps it resumable.
#[tokio::test]
async fn a_session_closed_with_4009_cannot_be_resumed() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let r = start(EmulatorConfig {
            identify_window_ms: 0,
            ..small(2)
        })
        .await;
        let emu = &r.emu;
        let token = emu.application().token;
        let a = identified(emu, [0, 1]).await;
        let sid = a.session_id().expect("session");
        caught_up(emu, &a, &sid).await;
        emu.close_session(&sid, 4009).expect("close");
        assert_eq!(a.wait_close().await, 4009);
        let b = raw(connect(emu).await);
        b.resume(&token, &sid, a.last_seq());
        assert_eq!(b.wait_invalid_session().await, json!(false));
        assert!(b.dispatches("RESUMED").is_empty());
        assert!(emu.sessions().is_empty());

        let c = identified(emu, [0, 1]).await;
        let sid = c.session_id().expect("session");
        caught_up(emu, &c, &sid).await;
        emu.close_session(&sid, 4000).expect("close");
        assert_eq!(c.wait_close().await, 4000);
        let d = raw(connect(emu).await);
        d.resume(&token, &sid, c.last_seq());
        d.wait_resumed().await;
    })
    .await
    .expect("test finished in time");
}

/// At most `resume_buffer_frames` dispatches are kept: a RESUME that needs an older one gets
/// INVALID_SESSION `d: false`, and after that refusal the session is gone for good.
#[tokio::test]
async fn the_resume_buffer_is_bounded() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let r = start(EmulatorConfig {
            resume_buffer_frames: 4,
            ..small(2)
        })
        .await;
        let emu = &r.emu;
        let token = emu.application().token;
        let a = identified(emu, [0, 1]).await;
        let sid = a.session_id().expect("session");
        let g = emu.guilds()[0].clone();
        for i in 0..6 {
            emu.post_message(g.channels[0], g.members[1], &format!("m-{i}"))
                .expect("post");
        }
        caught_up(emu, &a, &sid).await;
        let end = a.last_seq();
        drop(a);
        disconnected(emu, &sid).await;
        assert_eq!(emu.sessions()[0].buffered, 4);

        let b = raw(connect(emu).await);
        b.resume(&token, &sid, end - 4);
        let got = b.wait_resumed().await;
        assert_eq!(seqs(&got), (end - 3..=end + 1).collect::<Vec<_>>());
        drop(b);
        disconnected(emu, &sid).await;

        // The buffer now holds end-2..=end+1 (RESUMED included); end-3 is gone.
        let c = raw(connect(emu).await);
        c.resume(&token, &sid, end - 4);
        assert_eq!(c.wait_invalid_session().await, json!(false));
        let d = raw(connect(emu).await);
        d.resume(&token, &sid, end + 1);
        assert_eq!(
            d.wait_invalid_session().await,
            json!(false),
            "a refused resume ends the session"
        );
        let counters = emu.counters();
        assert_eq!((counters.resumes, counters.resumes_refused), (1, 2));
    })
    .await
    .expect("test finished in time");
}

/// The resume policy is readable and settable over the control API and applies at once: a
/// short expiry ends disconnected sessions, a small buffer trims live ones.
#[tokio::test]
async fn resume_policy_is_settable_over_the_control_api() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let r = start(EmulatorConfig {
            identify_window_ms: 0,
            ..small(2)
        })
        .await;
        let emu = &r.emu;
        let token = emu.application().token;
        let http = reqwest::Client::new();
        let base = format!("{}/control/v1", emu.api_base());
        let policy: Value = http
            .get(format!("{base}/resume-policy"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(
            policy,
            json!({"buffer_frames": 50_000, "expiry_ms": 180_000})
        );
        let set = http
            .put(format!("{base}/resume-policy"))
            .json(&json!({"expiry_ms": 300}))
            .send()
            .await
            .expect("put");
        assert_eq!(set.status(), 200);
        assert_eq!(
            set.json::<Value>().await.expect("json"),
            json!({"buffer_frames": 50_000, "expiry_ms": 300})
        );

        let a = identified(emu, [0, 1]).await;
        let sid = a.session_id().expect("session");
        caught_up(emu, &a, &sid).await;
        let seq = a.last_seq();
        drop(a);
        eventually("the expired session to be forgotten", || async {
            emu.sessions().is_empty().then_some(())
        })
        .await;
        let b = raw(connect(emu).await);
        b.resume(&token, &sid, seq);
        assert_eq!(b.wait_invalid_session().await, json!(false));

        let set = http
            .put(format!("{base}/resume-policy"))
            .json(&json!({"buffer_frames": 2, "expiry_ms": 180_000}))
            .send()
            .await
            .expect("put");
        assert_eq!(set.status(), 200);
        let c = raw(connect(emu).await);
        c.identify(&token, [0, 1], 1);
        let cc = &c;
        eventually("READY", || async move { cc.session_id() }).await;
        let listed: Vec<Value> = http
            .get(format!("{base}/sessions"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(listed[0]["buffered"], 2);

        let bad = http
            .put(format!("{base}/resume-policy"))
            .json(&json!({"expiry": 1}))
            .send()
            .await
            .expect("put");
        assert_eq!(bad.status(), 400);
        assert_eq!(bad.json::<Value>().await.expect("json")["code"], 50035);
    })
    .await
    .expect("test finished in time");
}

/// Tests do not know session ids: `GET /sessions?shard=N` and `POST /shards/{id}/{action}`
/// find them by shard. Invalidate (resumable or not) and expire, end to end.
#[tokio::test]
async fn control_api_addresses_sessions_by_shard() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let r = start(EmulatorConfig {
            identify_window_ms: 0,
            ..small(8)
        })
        .await;
        let emu = &r.emu;
        let token = emu.application().token;
        let http = reqwest::Client::new();
        let base = format!("{}/control/v1", emu.api_base());
        let s0 = identified(emu, [0, 2]).await;
        let s1 = identified(emu, [1, 2]).await;
        let (sid0, sid1) = (
            s0.session_id().expect("session"),
            s1.session_id().expect("session"),
        );
        let get = |url: String| {
            let http = http.clone();
            async move { http.get(url).send().await.expect("get") }
        };
        let post = |url: String, body: Value| {
            let http = http.clone();
            async move { http.post(url).json(&body).send().await.expect("post") }
        };

        let one: Vec<Value> = get(format!("{base}/sessions?shard=1"))
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(one.len(), 1);
        assert_eq!(one[0]["session_id"], sid1.as_str());
        assert_eq!(one[0]["shard"], json!([1, 2]));
        assert_eq!(one[0]["resumable"], true);
        assert_eq!(get(format!("{base}/sessions?shard=x")).await.status(), 400);

        let resp = post(
            format!("{base}/shards/0/invalidate"),
            json!({"resumable": true}),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.json::<Value>().await.expect("json"),
            json!({"sessions": [sid0]})
        );
        assert_eq!(s0.wait_invalid_session().await, json!(true));
        caught_up(emu, &s1, &sid1).await;
        s0.resume(&token, &sid0, s0.last_seq());
        s0.wait_resumed().await;

        let resp = post(format!("{base}/sessions/{sid1}/expire"), json!(null)).await;
        assert_eq!(resp.status(), 204);
        let one: Vec<Value> = get(format!("{base}/sessions?shard=1"))
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(
            (one[0]["resumable"].clone(), one[0]["buffered"].clone()),
            (json!(false), json!(0))
        );
        let g1 = emu
            .guilds()
            .into_iter()
            .find(|g| (g.id >> 22) % 2 == 1)
            .expect("a guild of shard 1");
        emu.post_message(g1.channels[0], g1.members[1], "still live")
            .expect("post");
        let s1c = &s1;
        eventually(
            "the expired session's socket to keep working",
            || async move {
                s1c.frames()
                    .iter()
                    .any(|f| f["d"]["content"] == "still live")
                    .then_some(())
            },
        )
        .await;
        let seq1 = s1.last_seq();
        drop(s1);
        eventually("the expired session to go with its socket", || async {
            emu.sessions_of_shard(1).is_empty().then_some(())
        })
        .await;
        let again = raw(connect(emu).await);
        again.resume(&token, &sid1, seq1);
        assert_eq!(again.wait_invalid_session().await, json!(false));

        let resp = post(
            format!("{base}/shards/0/invalidate"),
            json!({"resumable": false}),
        )
        .await;
        assert_eq!(resp.status(), 200);
        let s0c = &s0;
        eventually("op 9 d:false", || async move {
            s0c.frames()
                .iter()
                .any(|f| f["op"] == 9 && f["d"] == false)
                .then_some(())
        })
        .await;
        assert!(emu.sessions().is_empty());

        let none = post(format!("{base}/shards/0/drop"), json!(null)).await;
        assert_eq!(none.status(), 404);
        assert_eq!(
            none.json::<Value>().await.expect("json"),
            json!({"code": 0, "message": "no session for shard 0"})
        );
        assert_eq!(
            post(format!("{base}/sessions/nope/drop"), json!(null))
                .await
                .status(),
            404
        );
        assert_eq!(
            post(format!("{base}/shards/0/bogus"), json!(null))
                .await
                .status(),
            400
        );
    })
    .await
    .expect("test finished in time");
}

/// Counters report identifies, refused identifies (rate limit, bad token), resumes, refused
/// resumes and INVALID_SESSIONs, in-process and at `GET /counters`.
#[tokio::test]
async fn counters_report_identifies_resumes_and_refusals() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let r = start(small(2)).await;
        let emu = &r.emu;
        let token = emu.application().token;
        let a = identified(emu, [0, 1]).await;
        let sid = a.session_id().expect("session");

        // Same bucket within the 5 s identify window: op 9 d:false.
        let b = raw(connect(emu).await);
        b.identify(&token, [0, 1], 1);
        assert_eq!(b.wait_invalid_session().await, json!(false));
        let c = raw(connect(emu).await);
        c.identify("wrong-token", [0, 1], 1);
        assert_eq!(c.wait_close().await, 4004);
        let d = raw(connect(emu).await);
        d.resume(&token, "no-such-session", 1);
        assert_eq!(d.wait_invalid_session().await, json!(false));

        caught_up(emu, &a, &sid).await;
        let seq = a.last_seq();
        drop(a);
        disconnected(emu, &sid).await;
        let e = raw(connect(emu).await);
        e.resume(&token, &sid, seq);
        e.wait_resumed().await;

        let counters: Value = reqwest::get(format!("{}/control/v1/counters", emu.api_base()))
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(counters["identifies"], 1);
        assert_eq!(counters["identifies_refused"], 2);
        assert_eq!(counters["resumes"], 1);
        assert_eq!(counters["resumes_refused"], 1);
        assert_eq!(counters["invalid_sessions"], 2);
    })
    .await
    .expect("test finished in time");
}

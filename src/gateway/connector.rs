//! The Discord shards this pod connects (DESIGN §6): each shard has exactly one connection in
//! the cluster, held by the live pod the [`shard_map`] names; sessions move between pods by
//! RESUME, and IDENTIFY happens only when no resumable session exists.
//!
//! **Library.** Shard connections use twilight-gateway, not serenity: serenity 0.12 cannot
//! resume a session it did not start (its session id is private), and a session that cannot
//! move costs an IDENTIFY on every rollout, rescale and crash. twilight-gateway takes a saved
//! session and resume URL (`ConfigBuilder::session`, `resume_url`), hands every frame over
//! unparsed (so the connector reads only the envelope) and asks a `Queue` before it identifies
//! (our cluster-wide [`ClusterQueue`]). serenity stays for REST and the event models.
//!
//! **Taking a shard.** When the map says a shard is this pod's and it does not run it, the pod
//! asks every reachable peer to release it. A peer that runs it closes its connection with a
//! resumable close, waits (bounded) until what it received is acknowledged, and answers with
//! the session; a peer whose own view still gives it the shard refuses, and the pod asks again
//! later (views agree within a poll or two). The pod then RESUMEs the newest session it knows
//! (released, or published by a peer that died), from the acknowledged sequence: Discord
//! replays the rest, and writes are idempotent. With no session anywhere, it identifies.
//!
//! **Keeping a shard.** A pod keeps a shard until a peer asks for it or the pod stops. If its
//! connection is taken over (Discord allows one connection per session) while its own view no
//! longer gives it the shard, it lets go instead of fighting for the session.
//!
//! **Gaps.** A READY on a shard that had a session means the session could not be resumed:
//! the dispatches after the last acknowledged one were never received. That is counted
//! (`gateway_session_gaps`), logged once with the shard and the sequence, and listed in
//! `status`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn, Instrument};
use twilight_gateway::{CloseFrame, ConfigBuilder, Intents, Message, Session, Shard, ShardId};

use crate::gateway::acks::{ShardAcks, SharedAcks};
use crate::gateway::delivery::Outgoing;
use crate::gateway::envelope;
use crate::gateway::features;
use crate::gateway::identify_queue::ClusterQueue;
use crate::gateway::members::Members;
use crate::gateway::pod::Pod;
use crate::gateway::shard_map;
use crate::ownership::{owner_of_event, Ordinal};
use crate::reshard::topology::now_ms;
use crate::wire::{Released, SessionGap, ShardSession};

/// How often the pod checks which shards it should connect, besides every change of its view.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// How long a released shard waits for its received dispatches to be acknowledged before it
/// hands its session over anyway (the next connector then replays a little more).
const RELEASE_DRAIN: Duration = Duration::from_secs(5);
/// How long a closing connection is read for the frames Discord sent before the close.
const CLOSE_READ: Duration = Duration::from_secs(2);
/// Gaps kept for the status report.
const GAPS_KEPT: usize = 32;

/// What every shard connection of the pod is built from.
#[derive(Clone, Debug)]
pub struct ShardsConfig {
    /// Shards of the bot (all pods agree on it).
    pub total: u32,
    /// The bot token.
    pub token: String,
    /// Gateway intents.
    pub intents: Intents,
    /// The gateway URL (the emulator's), when not Discord's.
    pub gateway_url: Option<String>,
}

/// The pod refused to release a shard: under its view it still connects it.
#[derive(Debug, thiserror::Error)]
#[error("this pod still connects shard {0} under its view")]
pub struct Refused(pub u32);

/// The shard connections of this pod.
pub struct Connectors {
    pod: Arc<Pod>,
    cfg: ShardsConfig,
    queue: ClusterQueue,
    members: watch::Receiver<Members>,
    running: Mutex<BTreeMap<u32, Running>>,
    /// Shards being taken (release asked of the peers): not released to anyone meanwhile.
    taking: Mutex<BTreeSet<u32>>,
    ready: AtomicBool,
}

/// One shard this pod runs.
struct Running {
    acks: SharedAcks,
    state: Arc<Mutex<Connection>>,
    release: mpsc::Sender<oneshot::Sender<Option<ShardSession>>>,
}

/// The session of a running shard.
#[derive(Debug, Default)]
struct Connection {
    /// `(session_id, resume_url)` once known.
    session: Option<(String, String)>,
    epoch: u64,
    connected: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section below replaces whole values; a panic elsewhere leaves them usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Connectors {
    /// The connectors of `pod`, asking `queue` before identifying.
    pub fn new(
        pod: Arc<Pod>,
        cfg: ShardsConfig,
        queue: ClusterQueue,
        members: watch::Receiver<Members>,
    ) -> Self {
        Connectors {
            pod,
            cfg,
            queue,
            members,
            running: Mutex::new(BTreeMap::new()),
            taking: Mutex::new(BTreeSet::new()),
            ready: AtomicBool::new(false),
        }
    }

    /// Whether every shard the map gives this pod is connected.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The shards this pod runs.
    pub fn shards(&self) -> Vec<u32> {
        lock(&self.running).keys().copied().collect()
    }

    /// Received dispatches not yet acknowledged, over every shard this pod runs.
    pub fn unacknowledged(&self) -> u64 {
        lock(&self.running)
            .values()
            .map(|r| ShardAcks::read(&r.acks, ShardAcks::unacknowledged))
            .sum()
    }

    /// Writes the current record of every running shard into the book, and returns the book.
    pub fn publish(&self) -> Vec<ShardSession> {
        let records: Vec<ShardSession> = lock(&self.running)
            .iter()
            .filter_map(|(shard, r)| record(*shard, r))
            .collect();
        for r in records {
            self.pod.book.learn(r);
        }
        self.pod.book.all()
    }

    /// Follows the pod's view until `stop`: takes the shards the map gives it.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut members = self.members.clone();
        loop {
            if members.borrow().polled {
                self.reconcile();
            }
            tokio::select! {
                () = &mut stop => return,
                changed = members.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(RECONCILE_EVERY) => {}
            }
        }
    }

    fn wanted(&self, members: &Members) -> Vec<u32> {
        let me = self.pod.ordinal();
        if members.live.contains(&me) {
            shard_map::shards_of(me, self.cfg.total, &members.live)
        } else {
            Vec::new()
        }
    }

    fn reconcile(self: &Arc<Self>) {
        let members = self.members.borrow().clone();
        let wanted = self.wanted(&members);
        let mut connected = true;
        for shard in &wanted {
            let running = lock(&self.running)
                .get(shard)
                .map(|r| lock(&r.state).connected);
            match running {
                Some(up) => connected &= up,
                None => {
                    connected = false;
                    if lock(&self.taking).insert(*shard) {
                        let this = self.clone();
                        let reachable = members.reachable.clone();
                        let shard = *shard;
                        tokio::spawn(
                            async move { this.take(shard, reachable).await }.in_current_span(),
                        );
                    }
                }
            }
        }
        let was = self.ready.swap(connected, Ordering::Relaxed);
        if connected && !was {
            info!(shards = ?wanted, "every shard of this pod is connected");
            self.pod.ownership.set_receiving(true);
        }
    }

    /// Takes `shard` over: asks the peers to release it, then resumes the newest session known
    /// (or identifies when there is none).
    async fn take(self: Arc<Self>, shard: u32, reachable: Vec<Ordinal>) {
        let answers = futures::future::join_all(reachable.iter().map(|p| {
            let this = &self;
            async move { (*p, this.pod.peers.release(*p, shard).await) }
        }))
        .await;
        let mut refused = None;
        for (peer, answer) in answers {
            match answer {
                Ok(None) => refused = Some(peer),
                Ok(Some(Released { session: Some(r) })) => {
                    info!(
                        shard,
                        from = peer.0,
                        acked_seq = r.acked_seq,
                        "shard released by a peer"
                    );
                    self.pod.book.learn(r);
                }
                Ok(Some(Released { session: None })) => {}
                // Unreachable: if it ran the shard, it published the session (or is gone).
                Err(err) => debug!(shard, peer = peer.0, cause = %err, "release not answered"),
            }
        }
        if let Some(peer) = refused {
            debug!(
                shard,
                peer = peer.0,
                "a peer still connects this shard; asking again later"
            );
            lock(&self.taking).remove(&shard);
            return;
        }
        let start = self.pod.book.get(shard).filter(ShardSession::resumable);
        // Registered in `running` before leaving `taking`: a release asked in between is
        // refused, never answered "not here".
        self.start(shard, start);
        lock(&self.taking).remove(&shard);
    }

    /// Starts the connection of `shard`: a RESUME of `from` when given, else an IDENTIFY
    /// through the cluster's queue.
    fn start(self: &Arc<Self>, shard: u32, from: Option<ShardSession>) {
        let epoch = self.pod.book.get(shard).map_or(0, |r| r.epoch) + 1;
        let acks = SharedAcks::default();
        ShardAcks::write(&acks, |a| {
            a.restart(from.as_ref().map_or(0, |f| f.acked_seq))
        });
        let mut builder =
            ConfigBuilder::new(self.cfg.token.clone(), self.cfg.intents).queue(self.queue.clone());
        if let Some(url) = &self.cfg.gateway_url {
            builder = builder.proxy_url(url.clone());
        }
        if let Some(f) = &from {
            builder = builder
                .session(Session::new(f.acked_seq, f.session_id.clone()))
                .resume_url(f.resume_url.clone());
            info!(shard, session = %f.session_id, from_seq = f.acked_seq, "resuming the shard's session");
        } else {
            info!(
                shard,
                "no resumable session known: identifying through the cluster's queue"
            );
        }
        let connection = Shard::with_config(ShardId::new(shard, self.cfg.total), builder.build());
        let state = Arc::new(Mutex::new(Connection {
            session: from
                .as_ref()
                .map(|f| (f.session_id.clone(), f.resume_url.clone())),
            epoch,
            connected: false,
        }));
        let (release, requests) = mpsc::channel(1);
        lock(&self.running).insert(
            shard,
            Running {
                acks: acks.clone(),
                state: state.clone(),
                release,
            },
        );
        let this = self.clone();
        tokio::spawn(
            async move {
                let run = ShardRun {
                    connectors: this,
                    shard,
                    acks,
                    state,
                    had_session: from.is_some(),
                };
                run.drive(connection, requests).await;
            }
            .instrument(tracing::info_span!("shard", shard)),
        );
    }

    /// A peer asks for `shard`: closes it resumably and returns its session.
    ///
    /// # Errors
    /// [`Refused`] while this pod is taking the shard itself, or still connects it under its
    /// own view.
    pub async fn release(&self, shard: u32) -> Result<Option<ShardSession>, Refused> {
        if lock(&self.taking).contains(&shard) {
            return Err(Refused(shard));
        }
        let Some(release) = lock(&self.running).get(&shard).map(|r| r.release.clone()) else {
            return Ok(None);
        };
        if self.still_mine(shard) {
            return Err(Refused(shard));
        }
        Ok(self.close(shard, release).await)
    }

    async fn close(
        &self,
        shard: u32,
        release: mpsc::Sender<oneshot::Sender<Option<ShardSession>>>,
    ) -> Option<ShardSession> {
        let (tx, rx) = oneshot::channel();
        if release.send(tx).await.is_ok() {
            if let Ok(record) = rx.await {
                return record;
            }
        }
        // The connection had already ended: what it published is all there is.
        lock(&self.running).remove(&shard);
        self.pod.book.get(shard)
    }

    /// Closes every shard this pod still runs (shutdown), resumably; their sessions stay in
    /// the book for whoever takes them.
    pub async fn close_all(&self) {
        let all: Vec<(u32, mpsc::Sender<oneshot::Sender<Option<ShardSession>>>)> =
            lock(&self.running)
                .iter()
                .map(|(s, r)| (*s, r.release.clone()))
                .collect();
        futures::future::join_all(all.into_iter().map(|(s, r)| self.close(s, r))).await;
    }

    /// Waits until peers have taken every shard of this pod (it stopped taking part), at most
    /// `limit`. Returns early, `false`, once no live peer is left to take them (the whole
    /// cluster is stopping): their sessions are then closed resumably and saved instead.
    pub async fn await_handed_over(&self, limit: Duration) -> bool {
        let handed = async {
            // Peers see this pod `stopping` at their next poll; give them that long before
            // concluding from an empty live set.
            let mut grace = 4;
            loop {
                if lock(&self.running).is_empty() {
                    return true;
                }
                if self.members.borrow().live.is_empty() {
                    if grace == 0 {
                        return false;
                    }
                    grace -= 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(limit, handed).await.unwrap_or(false)
    }

    /// Whether this pod connects `shard` under its current view.
    fn still_mine(&self, shard: u32) -> bool {
        let members = self.members.borrow();
        members.live.contains(&self.pod.ordinal())
            && shard_map::connector_of(shard, &members.live) == Some(self.pod.ordinal())
    }

    fn record_gap(&self, gap: SessionGap) {
        self.pod.metrics.session_gaps.inc();
        warn!(
            shard = gap.shard,
            session = %gap.session_id,
            after_seq = gap.after_seq,
            "the shard's session could not be resumed: dispatches after this sequence may be lost"
        );
        let mut gaps = lock(&self.pod.gaps);
        if gaps.len() == GAPS_KEPT {
            gaps.pop_front();
        }
        gaps.push_back(gap);
    }
}

/// The current record of a running shard, once it has a session.
fn record(shard: u32, r: &Running) -> Option<ShardSession> {
    let state = lock(&r.state);
    let (session_id, resume_url) = state.session.clone()?;
    Some(ShardSession {
        shard,
        session_id,
        resume_url,
        acked_seq: ShardAcks::read(&r.acks, ShardAcks::acked_through),
        epoch: state.epoch,
    })
}

/// The session a connection has now: `(session_id, resume_url)`.
fn session_of(connection: &Shard<ClusterQueue>) -> Option<(String, String)> {
    connection
        .session()
        .map(|s| s.id().to_owned())
        .zip(connection.resume_url().map(str::to_owned))
}

/// One shard's connection loop.
struct ShardRun {
    connectors: Arc<Connectors>,
    shard: u32,
    acks: SharedAcks,
    state: Arc<Mutex<Connection>>,
    /// Whether the shard has (or was started from) a session a READY would replace.
    had_session: bool,
}

impl ShardRun {
    async fn drive(
        mut self,
        mut connection: Shard<ClusterQueue>,
        mut requests: mpsc::Receiver<oneshot::Sender<Option<ShardSession>>>,
    ) {
        loop {
            tokio::select! {
                biased;
                request = requests.recv() => {
                    let Some(reply) = request else { return };
                    let record = self.hand_over(&mut connection).await;
                    let _ = reply.send(record);
                    return;
                }
                message = connection.next() => match message {
                    None => {
                        // twilight ends the stream only on a fatal close (bad token, intents).
                        lock(&self.state).connected = false;
                        self.connectors.pod.record_error(format!("shard {} closed for good", self.shard));
                        warn!("the gateway closed this shard for good; it stays down");
                        return;
                    }
                    Some(Err(err)) => debug!(cause = %err, "gateway receive error; the shard reconnects"),
                    Some(Ok(Message::Close(frame))) => {
                        lock(&self.state).connected = false;
                        let code = frame.as_ref().map(|f| f.code);
                        if !self.connectors.still_mine(self.shard) {
                            // Most likely taken over by the pod the map names now: let go.
                            info!(?code, "connection closed and the shard is another pod's now: letting go");
                            self.leave();
                            return;
                        }
                        info!(?code, "gateway connection closed; reconnecting");
                    }
                    Some(Ok(Message::Text(text))) => {
                        if let Some(seq) = self.on_frame(text).await {
                            self.on_ready(seq, session_of(&connection));
                        }
                    }
                },
            }
        }
    }

    /// Handles one frame: session bookkeeping, and routing of dispatches to their owners.
    /// Returns the sequence number of a READY, which the caller completes with the session
    /// (read from the connection, which is not shared across an await).
    async fn on_frame(&mut self, text: String) -> Option<u64> {
        let env = match envelope::read(&text) {
            Ok(env) => env,
            Err(err) => {
                warn!(cause = %err, "unreadable gateway frame");
                return None;
            }
        };
        if env.op == 9 {
            info!("session invalidated by the gateway");
            return None;
        }
        if env.op != 0 {
            return None;
        }
        let seq = env.seq.unwrap_or(0);
        let pod = &self.connectors.pod;
        match env.kind.as_deref() {
            Some("READY") => return Some(seq),
            Some("RESUMED") => {
                lock(&self.state).connected = true;
                ShardAcks::received(&self.acks, seq, 0);
                pod.metrics.gateway_resumed.inc();
                info!("gateway session resumed");
                self.connectors.publish();
            }
            Some(kind) => {
                pod.metrics.seen(kind);
                let owners: BTreeSet<Ordinal> = if features::handles(kind) {
                    pod.ownership
                        .processing()
                        .all()
                        .map(|t| owner_of_event(env.guild, t))
                        .collect()
                } else {
                    BTreeSet::new()
                };
                let tickets = ShardAcks::received(&self.acks, seq, owners.len() as u32);
                if tickets.is_empty() {
                    return None;
                }
                let frame: Arc<str> = text.into();
                for (owner, ticket) in owners.into_iter().zip(tickets) {
                    let out = Outgoing {
                        shard: self.shard,
                        seq,
                        frame: frame.clone(),
                        ticket,
                    };
                    pod.router.route(pod, owner, out).await;
                }
            }
            None => {}
        }
        None
    }

    /// A new session started (READY): a gap if it replaced one, then bookkeeping.
    fn on_ready(&mut self, seq: u64, session: Option<(String, String)>) {
        let pod = &self.connectors.pod;
        let previous = {
            let mut state = lock(&self.state);
            let previous = state.session.take();
            if self.had_session {
                state.epoch += 1;
            }
            state.session = session.clone();
            state.connected = true;
            previous
        };
        if let (true, Some((old, _))) = (self.had_session, previous) {
            let after_seq = ShardAcks::read(&self.acks, ShardAcks::acked_through);
            self.connectors.record_gap(SessionGap {
                shard: self.shard,
                session_id: old,
                after_seq,
                at_ms: now_ms(),
            });
        }
        ShardAcks::write(&self.acks, |a| a.restart(0));
        ShardAcks::received(&self.acks, seq, 0);
        self.had_session = true;
        pod.metrics.gateway_ready.inc();
        info!(session = ?session.as_ref().map(|s| &s.0), "gateway session started");
        self.connectors.publish();
    }

    /// Closes the connection resumably, waits (bounded) for what it received to be
    /// acknowledged, and returns the session for the next connector.
    /// `None` when the shard never had a session (it was still waiting to identify).
    async fn hand_over(&mut self, connection: &mut Shard<ClusterQueue>) -> Option<ShardSession> {
        connection.close(CloseFrame::RESUME);
        // Frames Discord sent before the close are real dispatches: route them too.
        let read_rest = async {
            while let Some(message) = connection.next().await {
                match message {
                    Ok(Message::Text(text)) => {
                        if let Some(seq) = self.on_frame(text).await {
                            self.on_ready(seq, session_of(connection));
                        }
                    }
                    Ok(Message::Close(_)) | Err(_) => break,
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_READ, read_rest).await;
        lock(&self.state).connected = false;
        let drained = async {
            while ShardAcks::read(&self.acks, ShardAcks::unacknowledged) > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(RELEASE_DRAIN, drained).await.is_err() {
            warn!("handing the shard over with dispatches unacknowledged: the next connector replays them");
        }
        self.leave()
    }

    /// Removes the shard from the running set, recording its last session in the book.
    fn leave(&self) -> Option<ShardSession> {
        let running = lock(&self.connectors.running).remove(&self.shard);
        let record = running.as_ref().and_then(|r| record(self.shard, r));
        if let Some(r) = &record {
            self.connectors.pod.book.learn(r.clone());
            info!(acked_seq = r.acked_seq, "shard handed over");
        }
        record
    }
}

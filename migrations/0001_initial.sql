-- guildshard per-pod schema, version 1.
--
-- Every table that holds guild data has `guild_id` and is keyed by Discord snowflakes, so every
-- write is an idempotent upsert that reaches the same state in any order (see src/store/*.rs for
-- the merge rule of each table). Snowflakes and Unix-millisecond times are stored as INTEGER
-- (they fit in i64 until 2084).

-- Pod-level metadata (the topology the pod last ran under, the message-cache purge cutoff, ...).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- One row per counted guild message (non-bot authors). Never removed by a delete: a sent
-- message counts. No content is kept here.
CREATE TABLE activity (
    guild_id      INTEGER NOT NULL,
    message_id    INTEGER NOT NULL,
    channel_id    INTEGER NOT NULL,
    author_id     INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    length        INTEGER NOT NULL,
    PRIMARY KEY (guild_id, message_id)
) WITHOUT ROWID;
CREATE INDEX activity_by_author ON activity (guild_id, author_id, created_at_ms);
CREATE INDEX activity_by_time ON activity (guild_id, created_at_ms);

-- The short-lived message cache that feeds the deletion log. `content_version` is 0 for the
-- content of MESSAGE_CREATE and the edit time for an edit; the highest version wins. A deleted
-- row (`deleted_at_ms` set) never holds content, whatever order the events came in: a delete
-- that precedes its create leaves a tombstone. `created_at_ms` is the snowflake time of the
-- message id, so it is the same whichever event created the row.
CREATE TABLE message_cache (
    guild_id        INTEGER NOT NULL,
    message_id      INTEGER NOT NULL,
    channel_id      INTEGER NOT NULL,
    author_id       INTEGER,
    created_at_ms   INTEGER NOT NULL,
    content         TEXT,
    content_version INTEGER NOT NULL DEFAULT 0,
    deleted_at_ms   INTEGER,
    PRIMARY KEY (guild_id, message_id)
) WITHOUT ROWID;
CREATE INDEX message_cache_by_time ON message_cache (created_at_ms);

-- Member joins and leaves as two sets of facts; /stats server derives the counts (a leave counts
-- once per membership, see src/store/activity.rs).
CREATE TABLE member_joins (
    guild_id     INTEGER NOT NULL,
    user_id      INTEGER NOT NULL,
    joined_at_ms INTEGER NOT NULL,
    PRIMARY KEY (guild_id, user_id, joined_at_ms)
) WITHOUT ROWID;
CREATE TABLE member_leaves (
    guild_id   INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    left_at_ms INTEGER NOT NULL,
    PRIMARY KEY (guild_id, user_id, left_at_ms)
) WITHOUT ROWID;

-- Bans, unbans and timeouts, keyed by the audit-log entry id.
CREATE TABLE mod_actions (
    guild_id    INTEGER NOT NULL,
    entry_id    INTEGER NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('ban', 'unban', 'timeout', 'timeout_removed')),
    until_ms    INTEGER,
    target_id   INTEGER NOT NULL,
    executor_id INTEGER,
    reason      TEXT,
    at_ms       INTEGER NOT NULL,
    PRIMARY KEY (guild_id, entry_id)
) WITHOUT ROWID;
CREATE INDEX mod_actions_by_target ON mod_actions (guild_id, target_id, at_ms);

-- "Report message": one report per (guild, message, reporter); the earliest interaction wins.
CREATE TABLE reports (
    guild_id         INTEGER NOT NULL,
    message_id       INTEGER NOT NULL,
    reporter_id      INTEGER NOT NULL,
    interaction_id   INTEGER NOT NULL,
    channel_id       INTEGER NOT NULL,
    reported_user_id INTEGER NOT NULL,
    content_excerpt  TEXT NOT NULL,
    at_ms            INTEGER NOT NULL,
    PRIMARY KEY (guild_id, message_id, reporter_id)
) WITHOUT ROWID;
CREATE INDEX reports_by_user ON reports (guild_id, reported_user_id, at_ms);

-- /setup: each channel is last-writer-wins by the interaction id that set it.
CREATE TABLE guild_settings (
    guild_id                    INTEGER PRIMARY KEY NOT NULL,
    mod_log_channel             INTEGER,
    mod_log_set_by              INTEGER,
    deletion_log_channel        INTEGER,
    deletion_log_set_by         INTEGER
) WITHOUT ROWID;

-- DM help replies: at most one per user per UTC day. No guild data.
CREATE TABLE dm_help (
    user_id    INTEGER NOT NULL,
    day        INTEGER NOT NULL,
    channel_id INTEGER NOT NULL,
    PRIMARY KEY (user_id, day)
) WITHOUT ROWID;

-- Messages to post, enqueued in the same transaction as the write that caused them. `key` is
-- chosen by the caller from the causing event, so a replay cannot enqueue a second post; the
-- rowid keeps insertion order for the sender. Guild rows move with the guild; DM rows have a
-- NULL guild_id.
CREATE TABLE outbox (
    key             TEXT PRIMARY KEY NOT NULL,
    guild_id        INTEGER,
    channel_id      INTEGER NOT NULL,
    body            TEXT NOT NULL,
    sent_message_id INTEGER
);
CREATE INDEX outbox_pending ON outbox (sent_message_id) WHERE sent_message_id IS NULL;
CREATE INDEX outbox_by_guild ON outbox (guild_id);

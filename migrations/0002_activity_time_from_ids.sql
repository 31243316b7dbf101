-- guildshard per-pod schema, version 2.
--
-- A message's time is its snowflake's time (created_at_ms = (message_id >> 22) + Discord's
-- epoch), so the primary key (guild_id, message_id) already orders each guild's activity by
-- time: "since T" is "message_id >= the first snowflake of T". The separate time index only
-- cost every insert a fourth B-tree (about a fifth of the writer's work under load).
DROP INDEX IF EXISTS activity_by_time;

//! The REST reads a moderation bot makes beyond startup (guild, member, user, channels, roles,
//! bans, audit log, the application) plus typing and reactions: parsed by serenity's own HTTP
//! client where it has a method, compared with Discord's documented shapes otherwise, and
//! answered with Discord's error bodies for unknown ids.

use std::time::Duration;

use serde_json::{json, Value};
use serenity::all::{ChannelId, GuildId, HttpBuilder, MessageId, ReactionType, UserId};

use super::{small, start};

/// Every read parses with serenity and holds what the emulator's world holds.
#[tokio::test]
async fn guild_user_and_application_reads_parse_with_serenity() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let r = start(small(2)).await;
        let emu = &r.emu;
        let g = emu.guilds()[0].clone();
        let (owner, banned, timed_out) = (g.owner_id, g.members[1], g.members[2]);
        emu.ban(g.id, banned, owner, Some("spam")).expect("ban");
        emu.timeout(
            g.id,
            timed_out,
            owner,
            Some(4_102_444_800_000),
            Some("calm"),
        )
        .expect("timeout");
        let http = HttpBuilder::new(emu.application().token)
            .proxy(emu.api_base())
            .ratelimiter_disabled(true)
            .build();
        let guild_id = GuildId::new(g.id);

        let guild = http.get_guild(guild_id).await.expect("guild parses");
        assert_eq!(guild.id.get(), g.id);
        assert_eq!(guild.name, g.name);
        assert_eq!(guild.owner_id.get(), owner);
        assert_eq!(guild.roles.len(), 2);
        assert_eq!(guild.approximate_member_count, None);
        let counted = http
            .get_guild_with_counts(guild_id)
            .await
            .expect("guild with counts parses");
        assert_eq!(
            counted.approximate_member_count,
            Some(emu.guild(g.id).expect("guild").members.len() as u64)
        );

        let member = http
            .get_member(guild_id, UserId::new(timed_out))
            .await
            .expect("member parses");
        assert_eq!(member.user.id.get(), timed_out);
        assert!(member.communication_disabled_until.is_some());
        let user = http
            .get_user(UserId::new(timed_out))
            .await
            .expect("user parses");
        assert_eq!(user.id.get(), timed_out);
        assert_eq!(user.name, emu.user(timed_out).expect("user").username);

        let channels = http.get_channels(guild_id).await.expect("channels parse");
        assert_eq!(
            channels.iter().map(|c| c.id.get()).collect::<Vec<_>>(),
            g.channels
        );
        let roles = http.get_guild_roles(guild_id).await.expect("roles parse");
        assert!(roles.iter().any(|r| r.id.get() == g.moderator_role));
        assert!(
            roles.iter().any(|r| r.id.get() == g.id),
            "@everyone has the guild's id"
        );

        let bans = http
            .get_bans(guild_id, None, None)
            .await
            .expect("bans parse");
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].user.id.get(), banned);
        assert_eq!(bans[0].reason.as_deref(), Some("spam"));

        let logs = http
            .get_audit_logs(guild_id, None, None, None, None)
            .await
            .expect("audit log parses");
        let actions: Vec<u8> = logs.entries.iter().map(|e| e.action.num()).collect();
        assert_eq!(actions, vec![24, 22], "newest first");
        assert_eq!(logs.entries[1].reason.as_deref(), Some("spam"));
        assert!(logs.users.contains_key(&UserId::new(owner)));
        assert!(logs.users.contains_key(&UserId::new(banned)));
        let only_bans = http
            .get_audit_logs(
                guild_id,
                Some(serenity::model::guild::audit_log::Action::Member(
                    serenity::model::guild::audit_log::MemberAction::BanAdd,
                )),
                Some(UserId::new(owner)),
                None,
                Some(10),
            )
            .await
            .expect("filtered audit log parses");
        assert_eq!(only_bans.entries.len(), 1);

        let channel = ChannelId::new(g.channels[0]);
        http.broadcast_typing(channel).await.expect("typing is 204");
        let m = emu
            .post_message(g.channels[0], g.members[3], "react to me")
            .expect("post");
        http.create_reaction(
            channel,
            MessageId::new(m.id),
            &ReactionType::Unicode("👍".into()),
        )
        .await
        .expect("reaction is 204");

        let client = reqwest::Client::new();
        let api = format!("{}/api/v10", emu.api_base());
        let auth = format!("Bot {}", emu.application().token);
        let me: Value = client
            .get(format!("{api}/guilds/{}/members/@me", g.id))
            .header("authorization", &auth)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(me["user"]["id"], emu.application().id.to_string());
        assert_eq!(me["user"]["bot"], true);
        let app: Value = client
            .get(format!("{api}/applications/@me"))
            .header("authorization", &auth)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(app["id"], emu.application().id.to_string());
        assert_eq!(app["verify_key"], emu.application().public_key_hex);
        assert_eq!(app["bot"]["id"], emu.application().id.to_string());
        assert_eq!(app["approximate_guild_count"], 2);
    })
    .await
    .expect("test finished in time");
}

/// Unknown ids answer 404 with Discord's `{"message","code"}`; bad input 400; no token 401.
#[tokio::test]
async fn unknown_ids_get_discords_error_bodies() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let r = start(small(1)).await;
        let emu = &r.emu;
        let g = emu.guilds()[0].clone();
        let channel = g.channels[0];
        let m = emu
            .post_message(channel, g.members[1], "hello")
            .expect("post");
        let stranger = emu.create_user("stranger").id;
        let client = reqwest::Client::new();
        let api = format!("{}/api/v10", emu.api_base());
        let auth = format!("Bot {}", emu.application().token);
        let guild = g.id;
        let thumbs = "%F0%9F%91%8D";

        let cases: Vec<(&str, String, u16, Value)> = vec![
            (
                "GET",
                "/guilds/1".into(),
                404,
                json!({"message": "Unknown Guild", "code": 10004}),
            ),
            (
                "GET",
                "/guilds/1/channels".into(),
                404,
                json!({"message": "Unknown Guild", "code": 10004}),
            ),
            (
                "GET",
                "/guilds/1/roles".into(),
                404,
                json!({"message": "Unknown Guild", "code": 10004}),
            ),
            (
                "GET",
                "/guilds/1/bans".into(),
                404,
                json!({"message": "Unknown Guild", "code": 10004}),
            ),
            (
                "GET",
                "/guilds/1/audit-logs".into(),
                404,
                json!({"message": "Unknown Guild", "code": 10004}),
            ),
            (
                "GET",
                "/guilds/1/members/@me".into(),
                404,
                json!({"message": "Unknown Guild", "code": 10004}),
            ),
            (
                "GET",
                format!("/guilds/{guild}/members/{stranger}"),
                404,
                json!({"message": "Unknown Member", "code": 10007}),
            ),
            (
                "GET",
                "/users/1".into(),
                404,
                json!({"message": "Unknown User", "code": 10013}),
            ),
            (
                "POST",
                "/channels/1/typing".into(),
                404,
                json!({"message": "Unknown Channel", "code": 10003}),
            ),
            (
                "PUT",
                format!("/channels/1/messages/{}/reactions/{thumbs}/@me", m.id),
                404,
                json!({"message": "Unknown Channel", "code": 10003}),
            ),
            (
                "PUT",
                format!("/channels/{channel}/messages/1/reactions/{thumbs}/@me"),
                404,
                json!({"message": "Unknown Message", "code": 10008}),
            ),
            (
                "PUT",
                format!(
                    "/channels/{channel}/messages/{}/reactions/custom:123/@me",
                    m.id
                ),
                400,
                json!({"message": "Unknown Emoji", "code": 10014}),
            ),
            (
                "PUT",
                format!("/channels/{channel}/messages/{}/reactions/abc/@me", m.id),
                400,
                json!({"message": "Unknown Emoji", "code": 10014}),
            ),
        ];
        for (method, path, status, body) in cases {
            let method = method.parse::<reqwest::Method>().expect("method");
            let resp = client
                .request(method.clone(), format!("{api}{path}"))
                .header("authorization", &auth)
                .send()
                .await
                .expect("request");
            assert_eq!(resp.status().as_u16(), status, "{method} {path}");
            assert_eq!(
                resp.json::<Value>().await.expect("json"),
                body,
                "{method} {path}"
            );

            let anonymous = client
                .request(method.clone(), format!("{api}{path}"))
                .send()
                .await
                .expect("request");
            assert_eq!(anonymous.status(), 401, "{method} {path} without a token");
        }

        for path in [
            "/guilds/abc".to_owned(),
            format!("/guilds/{guild}/members/abc"),
            format!("/guilds/{guild}/bans?limit=0"),
            format!("/guilds/{guild}/audit-logs?limit=101"),
        ] {
            let resp = client
                .get(format!("{api}{path}"))
                .header("authorization", &auth)
                .send()
                .await
                .expect("request");
            assert_eq!(resp.status(), 400, "{path}");
            assert_eq!(
                resp.json::<Value>().await.expect("json")["code"],
                50035,
                "{path}"
            );
        }
    })
    .await
    .expect("test finished in time");
}

//! Unit tests of the configuration parsers (the `[ha]` section is tested through the public API
//! in `target/tests/ha_parts.rs`).

use std::path::PathBuf;

use super::values::parse_naa;
use super::*;

const SINGLE: &str = include_str!("../../../examples/single.toml");
const CTL: &str = include_str!("../../../examples/ctl.conf");

fn err_of(file: &str, text: &str) -> String {
    match Config::parse(file, text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn connections_poll_200_us_by_default_and_poll_us_0_turns_it_off() {
    assert_eq!(Config::parse("x.toml", SINGLE).unwrap().poll_us, 200);
    let text = format!("poll_us = 0\n{SINGLE}");
    assert_eq!(Config::parse("x.toml", &text).unwrap().poll_us, 0);
    let e = err_of("x.toml", &format!("poll_us = 5000\n{SINGLE}"));
    assert!(e.starts_with("x.toml:1: ") && e.contains("poll_us"), "{e}");
}

#[test]
fn the_shipped_toml_example_describes_one_lun_without_authentication() {
    let c = Config::parse("examples/single.toml", SINGLE).expect("valid");
    assert_eq!(c.syntax, Syntax::Toml);
    assert_eq!(c.ping_timeout, 5);
    let t = c.target("iqn.2026-11.dev.duet:target0").expect("target");
    assert_eq!(t.luns.len(), 1);
    let l = &t.luns[0];
    assert_eq!(l.number, 1);
    assert_eq!(l.path, PathBuf::from("/tmp/duet/lun1.img"));
    assert_eq!(l.size, Some(256 << 20));
    assert_eq!(l.block_size, 512);
    assert!(l.create);
    assert!(!l.read_only);
    let pg = c.portal_group(&t.portal_group).expect("pg");
    assert_eq!(pg.listen, vec!["127.0.0.1:3260".parse().unwrap()]);
    assert_eq!(pg.tag, 1);
    let ag = c.auth_group(&t.auth_group).expect("ag");
    assert_eq!(ag.auth_type, AuthType::None);
    assert!(ag.admits_initiator("iqn.2026-11.test:anyone"));
}

#[test]
fn the_shipped_ctl_conf_example_parses() {
    let c = Config::parse("examples/ctl.conf", CTL).expect("valid");
    assert_eq!(c.syntax, Syntax::CtlConf);
    assert!(!c.targets.is_empty());
    let t = &c.targets[0];
    let ag = c.auth_group(&t.auth_group).unwrap();
    assert_eq!(ag.auth_type, AuthType::Chap);
    assert_eq!(ag.chap_user("duetuser").unwrap().secret, "duetsecret12");
    assert!(t.luns.iter().any(|l| l.read_only));
}

#[test]
fn a_bad_size_names_file_line_and_key() {
    let text = SINGLE.replace("size = \"256MiB\"", "size = \"lots\"");
    let line = text.lines().position(|l| l.contains("\"lots\"")).unwrap() + 1;
    assert_eq!(
        err_of("examples/single.toml", &text),
        format!("examples/single.toml:{line}: lun 1: `size`: expected a size like 256MiB")
    );
}

#[test]
fn toml_syntax_errors_and_unknown_keys_carry_the_line() {
    let e = err_of(
        "x.toml",
        "ping_timeout = 5\n[[target]]\nnmae = \"iqn.2026-11.a.b:c\"\n",
    );
    assert!(e.starts_with("x.toml:3: "), "{e}");
    assert!(e.contains("nmae"), "{e}");
    let e = err_of("x.toml", "ping_timeout = \n");
    assert!(e.starts_with("x.toml:1: "), "{e}");
    let e = err_of("x.toml", "ping_timeout = 5\npoll_us = -1\n");
    assert!(e.contains("x.toml:2") && e.contains("poll_us"), "{e}");
    let e = err_of("x.toml", "ping_timeout = 5\nio_threads = 1000\n");
    assert!(e.starts_with("x.toml:2: "), "{e}");
    assert!(e.contains("io_threads"), "{e}");
}

#[test]
fn toml_cross_references_are_checked() {
    let base = r#"
[portal_group.pg0]
listen = ["127.0.0.1:3260"]

[[target]]
name = "iqn.2026-11.dev.duet:t"
auth_group = "nobody"
"#;
    let e = err_of("c.toml", base);
    assert!(
        e.starts_with("c.toml:5: target iqn.2026-11.dev.duet:t: `auth_group`"),
        "{e}"
    );
    let e = err_of(
        "c.toml",
        &base.replace("\"nobody\"", "\"none\"\nportal_group = \"pg9\""),
    );
    assert!(
        e.contains("`portal_group`: no portal group named `pg9`"),
        "{e}"
    );
    let e = err_of("c.toml", &base.replace("auth_group = \"nobody\"\n", ""));
    assert!(e.contains("`auth_group`: missing"), "{e}");
}

#[test]
fn toml_lun_values_are_validated() {
    let t = |lun: &str| {
        format!(
                "[portal_group.p]\nlisten = [\"127.0.0.1:3999\"]\n[[target]]\nname = \"iqn.2026-11.dev.duet:t\"\nauth_group = \"none\"\n[[target.lun]]\n{lun}\n"
            )
    };
    let e = err_of("f", &t("number = 0\npath = \"/x\"\nblock_size = 520"));
    assert_eq!(e, "f:9: lun 0: `block_size`: expected 512 or 4096, got 520");
    let e = err_of("f", &t("number = 70000\npath = \"/x\""));
    assert!(
        e.starts_with("f:7: target iqn.2026-11.dev.duet:t: lun: `number`"),
        "{e}"
    );
    let e = err_of("f", &t("number = 1\npath = \"/x\"\nsize = 1000"));
    assert!(
        e.contains("not a positive multiple of the block size 512"),
        "{e}"
    );
    let e = err_of("f", &t("number = 1\npath = \"/x\"\ncreate = true"));
    assert!(
        e.contains("`size`: needed when the file is to be created"),
        "{e}"
    );
    let e = err_of("f", &t("number = 1"));
    assert!(e.contains("lun 1: `path`: missing"), "{e}");
    let ok = Config::parse("f", &t("number = 3\npath = \"/x\"\nsize = 4096\nnaa = \"naa.600140500000000000000000000000AB\"")).unwrap();
    assert_eq!(ok.targets[0].luns[0].naa[15], 0xAB);
}

#[test]
fn toml_chap_groups() {
    let text = r#"
[auth_group.a]
chap = [{ user = "u", secret = "s3cr3ts3cr3t" }]
initiator_names = ["iqn.2026-11.test:init1"]

[auth_group.m]
chap = [{ user = "u", secret = "s", mutual_user = "t", mutual_secret = "ts" }]

[auth_group.bad]
chap = [{ user = "u", secret = "s", mutual_user = "t" }]
"#;
    let e = err_of("a.toml", text);
    assert!(
        e.starts_with("a.toml:10: auth group `bad`: `chap`: give both"),
        "{e}"
    );
    let c = Config::parse(
        "a.toml",
        &text.replace(", mutual_user = \"t\" }]\n", " }]\n"),
    )
    .unwrap();
    let a = c.auth_group("a").unwrap();
    assert_eq!(a.auth_type, AuthType::Chap);
    assert!(a.admits_initiator("IQN.2026-11.test:init1"));
    assert!(!a.admits_initiator("iqn.2026-11.test:init2"));
    assert_eq!(c.auth_group("m").unwrap().auth_type, AuthType::ChapMutual);
    assert_eq!(c.auth_group("none").unwrap().auth_type, AuthType::None);
    assert!(!c
        .auth_group("deny")
        .unwrap()
        .admits_initiator("iqn.2026-11.test:x"));
}

#[test]
fn sizes_and_addresses() {
    assert_eq!(parse_size("256MiB"), Some(256 << 20));
    assert_eq!(parse_size("4G"), Some(4 << 30));
    assert_eq!(parse_size("512"), Some(512));
    assert_eq!(parse_size("1k"), Some(1024));
    assert_eq!(parse_size("MiB"), None);
    assert_eq!(parse_size("99999999999E"), None);
    assert_eq!(
        parse_listen("0.0.0.0"),
        Some("0.0.0.0:3260".parse().unwrap())
    );
    assert_eq!(parse_listen("[::]"), Some("[::]:3260".parse().unwrap()));
    assert_eq!(
        parse_listen("[::1]:3261"),
        Some("[::1]:3261".parse().unwrap())
    );
    assert_eq!(
        parse_listen("localhost:3262"),
        Some("127.0.0.1:3262".parse().unwrap())
    );
    assert_eq!(parse_listen("nowhere"), None);
    assert!(valid_iscsi_name("iqn.2026-11.dev.duet:target0"));
    assert!(valid_iscsi_name("eui.0123456789ABCDEF"));
    assert!(!valid_iscsi_name("iqn.26-11.x"));
    assert!(!valid_iscsi_name("target0"));
}

#[test]
fn defaults_are_stable_and_distinct() {
    let a = default_serial("iqn.2026-11.dev.duet:t", 1);
    assert_eq!(a, default_serial("IQN.2026-11.dev.duet:t", 1));
    assert_ne!(a, default_serial("iqn.2026-11.dev.duet:t", 2));
    let n = default_naa(&a);
    assert_eq!(n[0] >> 4, 6);
    assert_ne!(n, default_naa("other"));
}

#[test]
fn ctl_conf_errors_name_the_line() {
    let text = "portal-group pg0 {\n\tlisten 127.0.0.1\n}\n\ntarget iqn.2026-11.dev.duet:t {\n\tportal-group pg0\n\tauth-group no-authentication\n\tlun 0 {\n\t\tpath /tmp/x\n\t\tblocksize 520\n\t}\n}\n";
    assert_eq!(
        err_of("ctl.conf", text),
        "ctl.conf:10: lun 0: `blocksize`: expected 512 or 4096, got `520`"
    );
    let e = err_of("ctl.conf", &text.replace("blocksize 520", "sise 4G"));
    assert_eq!(e, "ctl.conf:10: lun 0: unknown keyword `sise`");
    let e = err_of("ctl.conf", &text.replace("}\n}\n", "}\n"));
    assert!(e.contains("missing `}`"), "{e}");
    let e = err_of(
        "ctl.conf",
        &text
            .replace("auth-group no-authentication", "auth-group x")
            .replace("blocksize 520", "blocksize 512\n\t\tsize 1M"),
    );
    assert_eq!(
        e,
        "ctl.conf:5: target iqn.2026-11.dev.duet:t: `auth_group`: no auth group named `x`"
    );
    let ok = Config::parse(
        "ctl.conf",
        &text.replace("blocksize 520", "blocksize 4096\n\t\tsize 1G"),
    )
    .unwrap();
    assert_eq!(ok.targets[0].luns[0].block_size, 4096);
    assert_eq!(ok.portal_group("pg0").unwrap().listen[0].port(), 3260);
}

#[test]
fn ctl_conf_target_level_chap_and_named_luns() {
    let text = r#"
lun disk1 {
    path /tmp/disk1.img
    size 16M
    option create on
}
portal-group pg0 {
    discovery-auth-group no-authentication
    listen 127.0.0.1:3300
}
target iqn.2026-11.dev.duet:t {
    portal-group pg0
    chap-mutual user secretsecret tuser tsecretsecret
    initiator-name iqn.2026-11.test:init1
    lun 0 disk1
}
"#;
    let c = Config::parse("c", text).unwrap();
    let t = &c.targets[0];
    let ag = c.auth_group(&t.auth_group).unwrap();
    assert_eq!(ag.auth_type, AuthType::ChapMutual);
    assert_eq!(ag.chap[0].mutual_user.as_deref(), Some("tuser"));
    assert_eq!(t.luns[0].size, Some(16 << 20));
    assert!(t.luns[0].create);
    // Without an auth-group, ctl.conf's `default` denies.
    let c = Config::parse("c", &text.replace("    chap-mutual user secretsecret tuser tsecretsecret\n    initiator-name iqn.2026-11.test:init1\n", "")).unwrap();
    assert_eq!(
        c.auth_group(&c.targets[0].auth_group).unwrap().auth_type,
        AuthType::Deny
    );
}

#[test]
fn syntax_is_detected_from_content() {
    assert_eq!(detect_syntax(SINGLE), Syntax::Toml);
    assert_eq!(detect_syntax(CTL), Syntax::CtlConf);
    assert_eq!(detect_syntax("# c\n\ntarget iqn.x {\n}"), Syntax::CtlConf);
    assert_eq!(detect_syntax("[[target]]\n"), Syntax::Toml);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
    #[test]
    fn parsers_never_panic_on_arbitrary_text(s in "\\PC{0,400}") {
        let _ = Config::parse("p", &s);
        let _ = ctl::parse("p", &s);
        let _ = toml::parse("p", &s);
    }

    #[test]
    fn parsers_never_panic_on_config_like_text(
        words in proptest::collection::vec(
            proptest::sample::select(vec![
                "target", "lun", "portal-group", "auth-group", "{", "}", "\n", "\"", "path",
                "size", "blocksize", "4096", "chap", "x", "iqn.2026-11.a.b:c", "listen",
                "[[target]]", "[[target.lun]]", "=", "number", "1", "[portal_group.p]", "#",
                "option", "readonly", "on", "lun", "0", "name",
            ]),
            0..60,
        )
    ) {
        let s = words.join(" ");
        let _ = Config::parse("p", &s);
        let _ = ctl::parse("p", &s);
    }

    #[test]
    fn sizes_never_panic(s in "\\PC{0,30}") {
        let _ = parse_size(&s);
        let _ = parse_listen(&s);
        let _ = valid_iscsi_name(&s);
        let _ = parse_naa(&s);
    }
}

#[test]
fn peer_addresses() {
    assert_eq!(
        "listen 127.0.0.1:7777".parse::<HaPeer>(),
        Ok(HaPeer::Listen("127.0.0.1:7777".parse().unwrap()))
    );
    assert_eq!(
        "connect   localhost:9".parse::<HaPeer>(),
        Ok(HaPeer::Connect("127.0.0.1:9".parse().unwrap()))
    );
    assert_eq!(
        "connect [::1]:7777"
            .parse::<HaPeer>()
            .map(|p| p.to_string()),
        Ok("connect [::1]:7777".to_string())
    );
    for bad in [
        "",
        "listen",
        "listen 127.0.0.1",
        "dial 127.0.0.1:1",
        "connect 0.0.0.0:7",
    ] {
        assert!(bad.parse::<HaPeer>().is_err(), "{bad}");
    }
}

/// `examples/single.toml` with `lun_extra` added to its LUN and `[ha]` appended when `ha`.
fn single_with(lun_extra: &str, ha: bool) -> String {
    let mut t = SINGLE.replace("create = true\n", &format!("create = true\n{lun_extra}"));
    if ha {
        t += "\n[ha]\nid = 1\npeer = \"listen 127.0.0.1:7777\"\nquorum = \"/q.img\"\nfencing = \"none\"\nsecret = \"0123456789abcdef\"\n";
    }
    t
}

#[test]
fn direct_io_is_off_for_a_single_controller_unless_asked_and_always_on_for_a_pair() {
    let lun = |text: &str| Config::parse("d.toml", text).unwrap().targets[0].luns[0].clone();
    assert!(!lun(&single_with("", false)).direct);
    assert!(lun(&single_with("direct = true\n", false)).direct);
    assert!(!lun(&single_with("direct = false\n", false)).direct);
    assert!(lun(&single_with("", true)).direct);
    assert!(lun(&single_with("direct = true\n", true)).direct);
    let text = single_with("direct = false\n", true);
    let line = text.lines().position(|l| l == "direct = false").unwrap() + 1;
    let e = err_of("d.toml", &text);
    assert!(e.starts_with(&format!("d.toml:{line}:")), "{e}");
    assert!(e.contains("`direct`") && e.contains("[ha]"), "{e}");
    let text = single_with("direct = \"yes\"\n", false);
    let line = text.lines().position(|l| l.starts_with("direct")).unwrap() + 1;
    let e = err_of("d.toml", &text);
    assert!(
        e.starts_with(&format!("d.toml:{line}:")) && e.contains("boolean"),
        "{e}"
    );
}

#[test]
fn ctl_conf_luns_take_option_direct() {
    let text = CTL.replacen(
        "option create on",
        "option create on\n        option direct on",
        1,
    );
    assert_ne!(text, CTL, "the example has an `option create on`");
    let c = Config::parse("c.conf", &text).unwrap();
    assert!(c.targets.iter().flat_map(|t| &t.luns).any(|l| l.direct));
    let bad = CTL.replacen(
        "option create on",
        "option create on\n        option direct maybe",
        1,
    );
    assert!(err_of("c.conf", &bad).contains("option direct"));
}

//! `Config::parse` and `config::parse_ha` on arbitrary text, seeded with TOML files.
//!
//! Properties: nothing panics; every error names the file it was given (and `Display` starts with
//! it); an accepted configuration's line numbers, when given, are within the text.
#![no_main]

use duet_target::config::{detect_syntax, parse_ha, Config, ConfigError, Syntax};
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzz/ctrl.toml";

fn check_error(text: &str, e: &ConfigError) {
    assert_eq!(e.file, FILE, "error without the file name: {e:?}");
    assert!(e.to_string().starts_with(FILE), "{e}");
    if let Some(line) = e.line {
        let lines = text.lines().count().max(1);
        assert!(
            line >= 1 && line <= lines + 1,
            "error on line {line} of a {lines}-line text: {e}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(FILE, text) {
        Ok(cfg) => {
            assert_eq!(cfg.syntax, detect_syntax(text));
            let _ = cfg.ha_id();
            let _ = cfg.ha_mode();
        }
        Err(e) => check_error(text, &e),
    }
    if detect_syntax(text) == Syntax::Toml {
        match parse_ha(FILE, text) {
            Ok(Some(ha)) => {
                let _ = ha.warnings();
                let _ = ha.link_config();
                let _ = (ha.heartbeat(), ha.dead_after(), ha.fence_timeout());
                let _ = ha.core_config(&[1, 2]);
            }
            Ok(None) => {}
            Err(e) => check_error(text, &e),
        }
    }
});

//! `Config::parse` on arbitrary text, seeded with FreeBSD ctl.conf files (the syntax is detected
//! from the content, so the fuzzer is free to wander into TOML too).
//!
//! Properties: nothing panics; every error names the file it was given; an accepted ctl.conf
//! configuration was detected as ctl.conf.
#![no_main]

use duet_target::config::{detect_syntax, Config};
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzz/ctl.conf";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(FILE, text) {
        Ok(cfg) => {
            assert_eq!(cfg.syntax, detect_syntax(text));
            let _ = cfg.ha_id();
        }
        Err(e) => {
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
    }
});

//! `duet-verify explore` serves stateright's Explorer on 127.0.0.1 and prints its address.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_duet-verify");

/// Stops the Explorer when the test ends, pass or fail.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the Explorer accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("request sent");
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body
}

#[test]
fn explore_serves_the_model_on_loopback() {
    let child = Command::new(BIN)
        .args([
            "explore",
            "--policy",
            "manual",
            "--port",
            "0",
            "--threads",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("duet-verify starts");
    let mut running = Running(child);
    let stdout = running.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("http://"))
        .expect("the Explorer's address is printed");
    let port: u16 = url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches('/')
        .parse()
        .expect("a port in the address");
    // The server starts right after printing its address; give it a few tries.
    let mut status = String::new();
    for _ in 0..50 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            status = get(port, "/.status");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    for name in duet_verification::cluster::PROPERTY_NAMES {
        assert!(status.contains(name), "{name} in {status}");
    }
    let states = get(port, "/.states");
    assert!(states.starts_with("HTTP/1.1 200"), "{states}");
    let page = get(port, "/");
    assert!(
        page.contains("<html") || page.contains("<!DOCTYPE"),
        "{page}"
    );
}

#[test]
fn explore_refuses_a_port_in_use() {
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("a free port");
    let port = taken.local_addr().expect("address").port().to_string();
    let out = Command::new(BIN)
        .args(["explore", "--port", &port])
        .output()
        .expect("duet-verify runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen"), "{stderr}");
}

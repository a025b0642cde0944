fn main() {
    eprintln!("duet-verify: not built yet");
    std::process::exit(2);
}

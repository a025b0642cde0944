fn main() {
    eprintln!("duetd: not built yet");
    std::process::exit(2);
}
